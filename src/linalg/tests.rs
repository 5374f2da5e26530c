use super::gram::GRAM_BLOCK_ROWS;
use super::*;
use crate::matrix::Matrix;
use crate::rng::Rng;

fn random_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn all_backends() -> Vec<Backend> {
    let mut v = vec![Backend::Portable(Portable)];
    if let Some(a) = Avx2Fma::detect() {
        v.push(Backend::Avx2Fma(a));
    }
    v
}

#[test]
fn kernels_agree_with_f64_reference_for_awkward_lengths() {
    let mut rng = Rng::new(3);
    for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100] {
        let a = random_vec(&mut rng, n);
        let b = random_vec(&mut rng, n);
        let c = random_vec(&mut rng, n);
        let d = random_vec(&mut rng, n);
        let e = random_vec(&mut rng, n);
        let tol = 1e-4 * (n as f64 + 1.0);
        for be in all_backends() {
            let (got_dot, got4, y1, y4, yx) = match be {
                Backend::Portable(k) => run_all(k, &a, &b, &c, &d, &e),
                Backend::Avx2Fma(k) => run_all(k, &a, &b, &c, &d, &e),
            };
            assert!(
                (f64::from(got_dot) - naive_dot(&a, &b)).abs() < tol,
                "{be:?} n={n}"
            );
            for (g, row) in got4.iter().zip([&a, &b, &c, &d]) {
                assert!((f64::from(*g) - naive_dot(row, &e)).abs() < tol);
            }
            for i in 0..n {
                let want1 = e[i] + 0.5 * a[i];
                assert!((y1[i] - want1).abs() < 1e-5);
                let want4 = e[i] + 1.0 * a[i] - 2.0 * b[i] + 0.25 * c[i] + 3.0 * d[i];
                assert!((y4[i] - want4).abs() < 1e-4);
                let wantx = a[i] + 0.5 * e[i];
                assert!((yx[i] - wantx).abs() < 1e-5);
            }
        }
    }
}

#[allow(clippy::type_complexity)]
fn run_all<K: Kernels>(
    k: K,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    e: &[f32],
) -> (f32, [f32; 4], Vec<f32>, Vec<f32>, Vec<f32>) {
    let dt = k.dot(a, b);
    let d4 = k.dot4([a, b, c, d], e);
    let mut y1 = e.to_vec();
    k.axpy(0.5, a, &mut y1);
    let mut y4 = e.to_vec();
    k.axpy4([1.0, -2.0, 0.25, 3.0], [a, b, c, d], &mut y4);
    let mut yx = e.to_vec();
    k.xpby(a, 0.5, &mut yx);
    (dt, d4, y1, y4, yx)
}

#[test]
fn norm_and_scale() {
    assert_eq!(norm(&[3.0, 4.0]), 5.0);
    let mut v = vec![1.0, -2.0];
    scale(2.0, &mut v);
    assert_eq!(v, vec![2.0, -4.0]);
    let mut y = vec![1.0, 1.0];
    axpy(2.0, &[1.0, 2.0], &mut y);
    assert_eq!(y, vec![3.0, 5.0]);
    assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
}

#[test]
fn cholesky_solves_hand_verified_system() {
    // A = [[4,2,0],[2,5,3],[0,3,10]] = L L^T with
    // L = [[2,0,0],[1,2,0],[0,1.5,sqrt(7.75)]]; x = [1,-1,2] gives
    // b = A x = [2, 3, 17].
    let a = [4.0, 2.0, 0.0, 2.0, 5.0, 3.0, 0.0, 3.0, 10.0];
    let mut f: Vec<f64> = a.to_vec();
    cholesky_factor(&mut f, 3).unwrap();
    assert_eq!(f[0], 2.0);
    assert_eq!(f[3], 1.0);
    assert_eq!(f[4], 2.0);
    assert_eq!(f[7], 1.5);
    assert!((f[8] - 7.75f64.sqrt()).abs() < 1e-12);
    let x = solve_spd(&a.map(|v| v as f32), &[2.0, 3.0, 17.0]).unwrap();
    for (got, want) in x.iter().zip([1.0, -1.0, 2.0]) {
        assert!((got - want).abs() < 1e-6, "{x:?}");
    }
}

#[test]
fn cholesky_rejects_indefinite_and_misshapen_input() {
    let mut a = vec![1.0, 2.0, 2.0, 1.0]; // eigenvalues 3 and -1
    assert!(matches!(
        cholesky_factor(&mut a, 2),
        Err(LinalgError::NotPositiveDefinite { pivot: 1, .. })
    ));
    let mut nan = vec![f64::NAN];
    assert!(cholesky_factor(&mut nan, 1).is_err());
    let mut short = vec![1.0; 3];
    assert!(matches!(
        cholesky_factor(&mut short, 2),
        Err(LinalgError::DimensionMismatch { .. })
    ));
}

fn random_spd(rng: &mut Rng, n: usize) -> Vec<f32> {
    // B^T B + I is SPD with eigenvalues >= 1
    let b = Matrix::from_vec(2 * n, n, random_vec(rng, 2 * n * n)).unwrap();
    gram(Portable, &b, 1.0)
}

#[test]
fn cg_converges_on_spd_system_and_matches_cholesky() {
    let mut rng = Rng::new(11);
    let n = 24;
    let a = random_spd(&mut rng, n);
    let b = random_vec(&mut rng, n);
    let exact = solve_spd(&a, &b).unwrap();
    let mut x = vec![0f32; n];
    let steps = conjugate_gradient(&a, &b, &mut x, 200).unwrap();
    assert!(steps >= 1);
    let err: f32 = x
        .iter()
        .zip(&exact)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-3, "max error {err} after {steps} steps");

    // a few steps from zero already shrink the residual; more steps shrink it further
    let resid = |x: &[f32]| {
        let mut ax = vec![0f32; n];
        sym_matvec(Portable, &a, x, 1.0, &mut ax);
        norm(&ax.iter().zip(&b).map(|(p, q)| p - q).collect::<Vec<_>>())
    };
    let mut x3 = vec![0f32; n];
    conjugate_gradient(&a, &b, &mut x3, 3).unwrap();
    let r0 = norm(&b);
    assert!(resid(&x3) < r0);
    assert!(resid(&x) < resid(&x3));
}

#[test]
fn gram_matches_naive_and_is_thread_count_independent() {
    let mut rng = Rng::new(5);
    let (rows, k) = (GRAM_BLOCK_ROWS * 2 + 37, 13);
    let m = Matrix::from_vec(rows, k, random_vec(&mut rng, rows * k)).unwrap();
    for be in all_backends() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| match be {
                Backend::Portable(kk) => gram(kk, &m, 0.5),
                Backend::Avx2Fma(kk) => gram(kk, &m, 0.5),
            })
        };
        let g1 = run(1);
        assert_eq!(g1, run(2), "{be:?}");
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..rows)
                    .map(|r| f64::from(m.row(r)[i]) * f64::from(m.row(r)[j]))
                    .sum::<f64>()
                    + if i == j { 0.5 } else { 0.0 };
                assert!((f64::from(g1[i * k + j]) - want).abs() < 1e-2 * want.abs().max(1.0));
                assert_eq!(g1[i * k + j], g1[j * k + i]);
            }
        }
    }
}

#[test]
fn sym_matvec_matches_naive() {
    let mut rng = Rng::new(9);
    for n in [1usize, 5, 8, 19] {
        let a = random_spd(&mut rng, n);
        let v = random_vec(&mut rng, n);
        for be in all_backends() {
            let mut out = vec![0f32; n];
            match be {
                Backend::Portable(k) => sym_matvec(k, &a, &v, -2.0, &mut out),
                Backend::Avx2Fma(k) => sym_matvec(k, &a, &v, -2.0, &mut out),
            }
            for i in 0..n {
                let want: f64 = -2.0
                    * (0..n)
                        .map(|j| f64::from(a[i * n + j]) * f64::from(v[j]))
                        .sum::<f64>();
                assert!((f64::from(out[i]) - want).abs() < 1e-3 * want.abs().max(1.0));
            }
        }
    }
}
