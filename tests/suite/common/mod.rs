//! Shared test support: backend list, tolerances, golden-file loader, proptest strategies.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kd_losses::reduction::{Normalizer, Reduction, RowLoss, RowMask};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Precision policy
// ---------------------------------------------------------------------------------------------

/// f32 against the float64 golden `expected`: `|a − b| ≤ F32_GOLDEN_RTOL · max(1, |b|)`
/// (CONVENTIONS.md; torch f32 itself is within 8.8e-7).
pub const F32_GOLDEN_RTOL: f64 = 1e-5;
/// f32 implementations compared with each other (same math, different op order).
pub const F32_CROSS_RTOL: f64 = 1e-4;
/// Central finite differences in f64-evaluated-in-f32 land: step and tolerance.
pub const FD_STEP: f64 = 1e-2;
pub const FD_RTOL: f64 = 2e-2;

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The backends every golden and property test runs on, each with autodiff.
///
/// `KD_BACKENDS=flex,ndarray` restricts the list (default: all three).
pub fn devices() -> Vec<(&'static str, Device)> {
    let wanted = std::env::var("KD_BACKENDS").unwrap_or_else(|_| "flex,ndarray,wgpu".into());
    let mut out = Vec::new();
    for name in wanted.split(',').map(str::trim) {
        match name {
            "flex" => out.push(("flex", Device::flex().autodiff())),
            // Deprecated in Burn 0.22 in favour of flex, but still a backend users run on.
            #[allow(deprecated)]
            "ndarray" => out.push(("ndarray", Device::ndarray().autodiff())),
            "wgpu" => out.push(("wgpu", Device::wgpu(Default::default()).autodiff())),
            "" => {}
            other => panic!("KD_BACKENDS: unknown backend {other:?} (known: flex, ndarray, wgpu)"),
        }
    }
    assert!(!out.is_empty(), "KD_BACKENDS selects no backend");
    out
}

/// Property tests run every case on the CPU backends and one case in `WGPU_CASE_STRIDE` on wgpu.
///
/// wgpu under Burn's default `fusion` compiles a new shader for every new shape, and CI's wgpu is
/// Mesa's software renderer: every case on it cost 7 of the 12 minutes of the test run. One case
/// in 8 still draws 8 random shapes and inputs per property on wgpu each run. With wgpu as the
/// only backend (`KD_BACKENDS=wgpu`, the GPU checks) every case runs on it.
pub const WGPU_CASE_STRIDE: u32 = 8;

thread_local! {
    /// Cases started by the property test on this thread (libtest runs each test on its own
    /// thread, so the sampling is per test and the same from run to run).
    static CASE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn wgpu_stride(all: &[(&'static str, Device)]) -> u32 {
    if all.iter().all(|(name, _)| *name == "wgpu") {
        1
    } else {
        WGPU_CASE_STRIDE
    }
}

/// The backends one property-test case runs on: all of `all`, except wgpu, which takes one case
/// in [`WGPU_CASE_STRIDE`]. Call it once per case.
pub fn case_devices<'a>(
    all: &'a [(&'static str, Device)],
) -> impl Iterator<Item = &'a (&'static str, Device)> {
    let n = CASE.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n
    });
    let stride = wgpu_stride(all);
    all.iter()
        .filter(move |(name, _)| *name != "wgpu" || n % stride == 0)
}

/// Property cases that [`case_devices`] gives `backend` out of `cases` (for the report lines).
pub fn cases_on(all: &[(&'static str, Device)], backend: &str, cases: u32) -> u32 {
    if backend == "wgpu" {
        cases.div_ceil(wgpu_stride(all))
    } else {
        cases
    }
}

/// Prints one line that `.ci/run` collects: which test ran how many checks on which backend.
///
/// The line is also appended to `$CARGO_TARGET_TMPDIR/kd-report.txt`, which `.ci/run` prints as a
/// summary after the tests (libtest hides the stdout of passing tests).
pub fn report(test: &str, backend: &str, count: usize) {
    use std::io::Write;
    let line = format!("KD-REPORT test={test} backend={backend} checks={count}");
    println!("{line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kd-report.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per line: tests run on parallel threads, and `writeln!` on an unbuffered
        // file may issue several writes that interleave with another thread's line.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

pub fn floats<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(data, shape), device)
}

pub fn ints<const D: usize>(data: Vec<i64>, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    Tensor::<D, Int>::from_data(TensorData::new(data, shape), device)
}

pub fn bools<const D: usize>(
    data: Vec<bool>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Bool> {
    Tensor::<D, Bool>::from_data(TensorData::new(data, shape), device)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

pub fn scalar(t: Tensor<1>) -> f64 {
    to_vec(t)[0] as f64
}

/// `|a − b| ≤ rtol · max(1, |b|)` elementwise; non-finite entries must match exactly.
pub fn assert_close(what: &str, got: &[f32], expected: &[f64], rtol: f64) {
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: length {} vs {}",
        got.len(),
        expected.len()
    );
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let g = g as f64;
        if !e.is_finite() {
            assert!(g == e, "{what}[{i}]: got {g}, expected non-finite {e}");
            continue;
        }
        let tol = rtol * e.abs().max(1.0);
        assert!(
            (g - e).abs() <= tol,
            "{what}[{i}]: got {g}, expected {e} (|diff| {} > tol {tol})",
            (g - e).abs()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Golden files (schema: tests/golden/CONVENTIONS.md)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Num {
    F(f64),
    B(bool),
    S(String),
}

impl Num {
    pub fn f64(&self) -> f64 {
        match self {
            Num::F(x) => *x,
            Num::B(b) => *b as u8 as f64,
            Num::S(s) => match s.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" => f64::NAN,
                other => panic!("golden: unknown number {other:?}"),
            },
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct JTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<Num>,
}

impl JTensor {
    pub fn f64s(&self) -> Vec<f64> {
        self.data.iter().map(Num::f64).collect()
    }
    pub fn f32s(&self) -> Vec<f32> {
        self.data.iter().map(|x| x.f64() as f32).collect()
    }
    pub fn i64s(&self) -> Vec<i64> {
        self.data.iter().map(|x| x.f64() as i64).collect()
    }
    pub fn bools(&self) -> Vec<bool> {
        self.data.iter().map(|x| x.f64() != 0.0).collect()
    }
    fn dims<const D: usize>(&self, what: &str) -> [usize; D] {
        assert_eq!(
            self.shape.len(),
            D,
            "golden {what}: rank {} != {D}",
            self.shape.len()
        );
        core::array::from_fn(|i| self.shape[i])
    }
    pub fn float<const D: usize>(&self, device: &Device) -> Tensor<D> {
        floats(self.f32s(), self.dims::<D>("float"), device)
    }
    pub fn int<const D: usize>(&self, device: &Device) -> Tensor<D, Int> {
        ints(self.i64s(), self.dims::<D>("int"), device)
    }
    pub fn boolean<const D: usize>(&self, device: &Device) -> Tensor<D, Bool> {
        bools(self.bools(), self.dims::<D>("bool"), device)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct Case {
    pub name: String,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, JTensor>,
    pub cotangent: Option<JTensor>,
    pub expected: BTreeMap<String, JTensor>,
}

impl Case {
    pub fn input(&self, name: &str) -> &JTensor {
        self.inputs
            .get(name)
            .unwrap_or_else(|| panic!("golden case {}: no input {name:?}", self.name))
    }
    pub fn expected(&self, name: &str) -> &JTensor {
        self.expected
            .get(name)
            .unwrap_or_else(|| panic!("golden case {}: no expected {name:?}", self.name))
    }
    pub fn param_f64(&self, name: &str) -> f64 {
        self.params[name].as_f64().unwrap_or_else(|| {
            panic!(
                "golden case {}: param {name:?} missing or not a number",
                self.name
            )
        })
    }
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(|v| v.as_str())
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct GoldenFile {
    pub family: String,
    pub cases: Vec<Case>,
}

/// Maps a golden reduction name (CONVENTIONS.md) to ours; `None` is `"none"`.
/// `masked_batchmean` is `Mean` after masking.
pub fn golden_reduction(name: &str) -> Option<Reduction> {
    match name {
        "sum" => Some(Reduction::Sum),
        "batchmean" | "masked_batchmean" | "masked_mean" => Some(Reduction::RowMean),
        "batchmean_dim0" => Some(Reduction::BatchMean),
        "mean" => Some(Reduction::ElementMean),
        "none" => None,
        other => panic!("golden: unmapped reduction {other:?}"),
    }
}

/// Reduces `rows` as the case's `reduction` asks (through `map`; cases without one are
/// `masked_batchmean`). For `none`, contracts with the stored cotangent so that the gradient is
/// the golden file's VJP. Returns the differentiable scalar and the output values to compare.
pub fn golden_finish(
    case: &Case,
    rows: RowLoss,
    device: &Device,
    map: fn(&str) -> Option<Reduction>,
) -> (Tensor<1>, Vec<f32>) {
    match map(case.param_str("reduction").unwrap_or("masked_batchmean")) {
        Some(r) => {
            let loss = rows.reduce(r);
            let v = to_vec(loss.clone());
            (loss, v)
        }
        None => {
            let values = rows.values();
            let v = to_vec(values.clone());
            let cot = case
                .cotangent
                .as_ref()
                .unwrap_or_else(|| panic!("{}: reduction none without cotangent", case.name));
            let n = cot.data.len();
            let cot = floats(cot.f32s(), [n], device);
            (values.mul(cot).sum(), v)
        }
    }
}

/// The row mask of a case: from its `labels` (≠ -100; a stored `mask` must agree), else its
/// `mask`, else none.
pub fn golden_row_mask(case: &Case, device: &Device) -> Option<RowMask> {
    if let Some(l) = case.inputs.get("labels") {
        let m = match l.rank() {
            1 => RowMask::from_labels(l.int::<1>(device), -100),
            2 => RowMask::from_labels(l.int::<2>(device), -100),
            r => panic!("golden: unmapped labels rank {r}"),
        };
        if let Some(stored) = case.inputs.get("mask") {
            let want: Vec<f32> = stored.bools().iter().map(|&b| b as u8 as f32).collect();
            let got: Vec<f32> = to_vec(m.flat().float());
            assert_eq!(got, want, "{}: labels and mask disagree", case.name);
        }
        return Some(m);
    }
    case.inputs.get("mask").map(|m| match m.rank() {
        1 => RowMask::new(m.boolean::<1>(device)),
        2 => RowMask::new(m.boolean::<2>(device)),
        r => panic!("golden: unmapped mask rank {r}"),
    })
}

/// Checks one expected output of a golden case (`got` is `None` when the loss gave no value or
/// gradient for it) at [`F32_GOLDEN_RTOL`].
pub fn check_golden_output(case: &Case, backend: &str, key: &str, got: Option<Vec<f32>>) {
    let got = got.unwrap_or_else(|| panic!("{backend}/{}: no value for {key}", case.name));
    assert_close(
        &format!("{backend}/{}/{key}", case.name),
        &got,
        &case.expected(key).f64s(),
        F32_GOLDEN_RTOL,
    );
}

/// Checks a golden case's `loss` and `grad_student` at [`F32_GOLDEN_RTOL`].
pub fn check_golden_loss_grad(case: &Case, backend: &str, value: &[f32], grad: Option<Tensor<1>>) {
    check_golden_output(case, backend, "loss", Some(value.to_vec()));
    let grad = grad.unwrap_or_else(|| panic!("{backend}/{}: no gradient", case.name));
    check_golden_output(case, backend, "grad_student", Some(to_vec(grad)));
}

/// Fails on a golden parameter the test does not map (a new reference case must not be skipped
/// silently).
pub fn assert_known_params(case: &Case, known: &[&str]) {
    if let Some(obj) = case.params.as_object() {
        for k in obj.keys() {
            assert!(
                known.contains(&k.as_str()),
                "golden case {}: unmapped param {k:?}",
                case.name
            );
        }
    }
}

/// The golden folder: `$KD_GOLDEN_DIR`, or the vendored `tests/golden`.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("KD_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"),
    }
}

/// Loads `<golden_dir>/<file>`; a missing or unreadable file fails the test.
pub fn load_golden(file: &str) -> GoldenFile {
    let path = golden_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden: cannot read {}: {e}", path.display()));
    let g: GoldenFile = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("golden: cannot parse {}: {e}", path.display()));
    assert!(
        !g.cases.is_empty(),
        "golden: {} has no cases",
        path.display()
    );
    g
}

// ---------------------------------------------------------------------------------------------
// Proptest strategies (named ranges)
// ---------------------------------------------------------------------------------------------

pub mod strategies {
    use proptest::prelude::*;

    /// Ordinary logits.
    pub const LOGIT_RANGE: core::ops::Range<f32> = -8.0..8.0;
    /// Extreme logits (the ±1e4 contract).
    pub const LARGE_RANGE: core::ops::Range<f32> = -1.0e4..1.0e4;
    /// Temperatures exercised by the properties.
    pub const T_RANGE: core::ops::Range<f64> = 0.25..8.0;
    /// Temperatures of the hostile-input properties (the supported range where every path
    /// agrees to the cross-implementation tolerance).
    pub const HOSTILE_T_RANGE: core::ops::Range<f64> = 0.05..1.0e3;

    /// `(rows, cols, data)` with rows in 1..=5 and cols in 2..=7.
    pub fn logits(range: core::ops::Range<f32>) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
        (1usize..=5, 2usize..=7).prop_flat_map(move |(r, c)| {
            (
                Just(r),
                Just(c),
                prop::collection::vec(range.clone(), r * c),
            )
        })
    }

    /// Two logit matrices of the same shape.
    pub fn logit_pair(
        range: core::ops::Range<f32>,
    ) -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>)> {
        (1usize..=5, 2usize..=7).prop_flat_map(move |(r, c)| {
            (
                Just(r),
                Just(c),
                prop::collection::vec(range.clone(), r * c),
                prop::collection::vec(range.clone(), r * c),
            )
        })
    }
}

/// Where proptest keeps the seeds of the cases that failed, for the properties that persist them:
/// `<file>.proptest-regressions` beside the test file that defines the property, replayed before
/// any new case. Proptest's default (`SourceParallel`) looks for a `main.rs` above the file,
/// finds `tests/suite/main.rs` and would read `tests/proptest-regressions/<path>.txt` instead.
pub fn regressions_beside_source() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(
        proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
    ))
}

// ---------------------------------------------------------------------------------------------
// Parity tests (fused vs composed)
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random values, uniform in `[-scale, scale]` (`rand`'s `StdRng` seeded
/// with `seed`: the same values on every run and platform for a given `rand` version).
pub fn lcg(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..=scale)).collect()
}

/// Every divergence, the parametrised ones inside their range (their endpoints, where they
/// equal a KL, are tested apart): the list the tests that cover every divergence iterate over.
pub fn every_divergence() -> Vec<kd_losses::divergence::Divergence> {
    use kd_losses::divergence::{Divergence, JsdConvention};
    vec![
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::generalized_jsd(0.5, JsdConvention::Trl).unwrap(),
        Divergence::generalized_jsd(0.3, JsdConvention::Continuous).unwrap(),
        Divergence::skew_kl(0.1).unwrap(),
        Divergence::skew_reverse_kl(0.1).unwrap(),
        Divergence::skew_kl(1.0).unwrap(),
        Divergence::TotalVariation,
        Divergence::SymmetricKl,
    ]
}

/// Every reduction, named (the normalizer is 7).
pub fn reductions() -> Vec<(&'static str, Reduction)> {
    vec![
        ("sum", Reduction::Sum),
        ("mean", Reduction::RowMean),
        ("batchmean", Reduction::BatchMean),
        ("elementmean", Reduction::ElementMean),
        (
            "normalizer",
            Reduction::Normalizer(Normalizer::new(7.0).unwrap()),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// f64 references (hostile-input tests)
// ---------------------------------------------------------------------------------------------

/// `log_softmax(x / T)` of one row in f64, with the crate's conventions: the maximum is
/// subtracted before dividing by `T`; an all `-inf` row stays all `-inf`; `+inf` entries form a
/// point mass (the uniform distribution over them).
pub fn ref_log_softmax(x: &[f32], t: f64) -> Vec<f64> {
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let x: Vec<f64> = if m == f64::INFINITY {
        x.iter()
            .map(|&v| {
                if v == f64::INFINITY {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect()
    } else {
        x
    };
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return x;
    }
    let z: Vec<f64> = x.iter().map(|&v| (v - m) / t).collect();
    let lse = z.iter().map(|&v| v.exp()).sum::<f64>().ln();
    z.iter().map(|&v| v - lse).collect()
}

/// Forward `KL(softmax(t/T) ‖ softmax(s/T))` per row of `v` logits, f64, `0 · log 0 = 0`.
pub fn ref_kl_rows(s: &[f32], t: &[f32], v: usize, temp: f64) -> Vec<f64> {
    s.chunks(v)
        .zip(t.chunks(v))
        .map(|(s, t)| {
            let (lq, lp) = (ref_log_softmax(s, temp), ref_log_softmax(t, temp));
            lp.iter()
                .zip(&lq)
                .filter(|(a, _)| **a > f64::NEG_INFINITY)
                .map(|(a, b)| a.exp() * (a - b))
                .sum()
        })
        .collect()
}
