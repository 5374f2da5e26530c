use super::*;
use futures::StreamExt;

#[tokio::test]
async fn accepted_connections_have_nagle_off() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // what a plain accept gives: Nagle on (the fault this function fixes)
    let plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert!(!accepted.nodelay().unwrap());
    drop((plain, accepted));

    let mut incoming = nodelay_incoming(listener);
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = incoming.next().await.unwrap().unwrap();
    assert!(stream.nodelay().unwrap());
}
