//! The kernel on the plain CubeCL backend (an application's Burn without `fusion`), on wgpu,
//! against a float64 host reference (value; gradient by central differences of it): every
//! divergence kind, with shared `-inf` entries, a `+inf` point mass in both rows and a dropped
//! row. The test suite runs the kernel under Burn's `fusion` (the default) through the public
//! API against the composed path. (No import from the loss modules: `fused` is a leaf.)

use super::*;
use burn::backend::ops::IntTensorOps;
use burn::tensor::TensorData;

fn host(t: CubeFloat) -> Vec<f32> {
    burn::tensor::try_read_sync(CubeBackend::float_into_data(t))
        .expect("synchronous read")
        .expect("read")
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
}

/// `softmax(x / T)` in f64, a `+inf` row as its point mass.
fn softmax(x: &[f32], t: f64) -> Vec<f64> {
    if x.contains(&f32::INFINITY) {
        let n = x.iter().filter(|&&v| v == f32::INFINITY).count() as f64;
        return x
            .iter()
            .map(|&v| if v == f32::INFINITY { 1.0 / n } else { 0.0 })
            .collect();
    }
    let m = x
        .iter()
        .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
    let e: Vec<f64> = x.iter().map(|&v| ((f64::from(v) - m) / t).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

fn kl(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

/// The divergence of one row in f64, by kind.
fn divergence(kind: SoftKind, p: &[f64], q: &[f64]) -> f64 {
    match kind {
        SoftKind::ForwardKl => kl(p, q),
        SoftKind::ReverseKl => kl(q, p),
        SoftKind::SymmetricKl => kl(p, q) + kl(q, p),
        SoftKind::TotalVariation => 0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>(),
        SoftKind::Mixture {
            teacher_share,
            teacher_coef,
            student_coef,
        } => {
            let w = f64::from(teacher_share);
            let m: Vec<f64> = p
                .iter()
                .zip(q)
                .map(|(a, b)| w * a + (1.0 - w) * b)
                .collect();
            let mut v = 0.0;
            if teacher_coef != 0.0 {
                v += f64::from(teacher_coef) * kl(p, &m);
            }
            if student_coef != 0.0 {
                v += f64::from(student_coef) * kl(q, &m);
            }
            v
        }
    }
}

fn reference(kind: SoftKind, s: &[f32], t: &[f32], w: &[f32], v: usize, temp: f64) -> f64 {
    (0..w.len())
        .filter(|&r| w[r] != 0.0)
        .map(|r| {
            let rows = r * v..(r + 1) * v;
            let (p, q) = (softmax(&t[rows.clone()], temp), softmax(&s[rows], temp));
            f64::from(w[r]) * temp * temp * divergence(kind, &p, &q)
        })
        .sum()
}

#[test]
fn plain_cube_backend_matches_f64_for_every_divergence() {
    let dev: burn_cubecl::CubeDevice = cubecl::Device::Wgpu(Default::default());
    let (r, v) = (4usize, 7usize);
    let mut s: Vec<f32> = (0..r * v)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
        .collect();
    let mut t: Vec<f32> = (0..r * v)
        .map(|i| ((i * 53 % 19) as f32 - 9.0) / 3.0)
        .collect();
    // Shared -inf entries (every divergence stays finite), and a row where both have a +inf
    // point mass.
    for i in [3, v + 2, v + 6] {
        s[i] = f32::NEG_INFINITY;
        t[i] = f32::NEG_INFINITY;
    }
    s[2 * v + 5] = f32::INFINITY;
    t[2 * v + 5] = f32::INFINITY;
    let weights = vec![1.0f32, 0.5, 2.0, 0.0];
    let mixture = |w: f32, a: f32, b: f32| SoftKind::Mixture {
        teacher_share: w,
        teacher_coef: a,
        student_coef: b,
    };
    let kinds = [
        SoftKind::ForwardKl,
        SoftKind::ReverseKl,
        mixture(0.5, 0.5, 0.5),
        mixture(0.2, 0.8, 0.2),
        mixture(0.1, 1.0, 0.0),
        mixture(0.7, 0.0, 1.0),
        SoftKind::TotalVariation,
        SoftKind::SymmetricKl,
    ];
    let temp = 1.5f32;
    for kind in kinds {
        let cube = |x: &[f32], shape: Vec<usize>| {
            CubeBackend::float_from_data(TensorData::new(x.to_vec(), shape), &dev)
        };
        let labels = CubeBackend::int_from_data(TensorData::new(vec![0i32; r], [r]), &dev);
        let p = KernelParams {
            kind,
            temperature: temp,
            soft_scale: temp * temp,
            has_hard: false,
            smoothing: 0.0,
            alpha: 1.0,
            beta: 0.0,
            grad_soft: 1.0,
            grad_hard: 0.0,
        };
        let (values, grad) = <CubeBackend as KdFusedBackend>::kd_fused_values_grad(
            cube(&s, vec![r, v]),
            cube(&t, vec![r, v]),
            labels,
            cube(&weights, vec![r]),
            p,
        );
        let (values, grad) = (host(values), host(grad));
        let f = |x: &[f32]| reference(kind, x, &t, &weights, v, f64::from(temp));
        let want = f(&s);
        assert!(
            (f64::from(values[1]) - want).abs() <= 2e-5 * want.abs().max(1.0),
            "{kind:?}: plain CubeCL {} vs f64 {want}",
            values[1]
        );
        assert_eq!(values[0], values[1], "{kind:?}: total = α·soft");
        // Central differences of the f64 reference (a finite entry moved by ±h).
        let h = 1e-3f32;
        let fd: Vec<f64> = (0..r * v)
            .map(|i| {
                if !s[i].is_finite() {
                    return 0.0;
                }
                let (mut a, mut b) = (s.clone(), s.clone());
                a[i] += h;
                b[i] -= h;
                (f(&a) - f(&b)) / (f64::from(a[i]) - f64::from(b[i]))
            })
            .collect();
        let scale = fd.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (i, (a, b)) in grad.iter().zip(&fd).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-4 * scale.max(1e-3),
                "{kind:?}: grad[{i}] plain CubeCL {a} vs f64 differences {b}"
            );
        }
    }
}
