fn main() {
    println!("funnel");
}
