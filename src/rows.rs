//! Shared row math: flattening `[..., V]` tensors to `[R, V]` rows, dtype rules, shape checks and
//! the numerically careful row functions (log-sum-exp, `log(eˣ + eʸ)`, KL rows) that several
//! loss families use.
//!
//! A layer below every loss family: it knows tensors and numbers, no loss types.

use burn::tensor::{Bool, DType, FloatDType, Int, Tensor};

/// `x` (`[R, K]`) with the rows where `drop` (`[R]`) is `true` replaced by ones: a `mask_fill`,
/// whose backward pass gives those rows an exact 0 whatever the rows computed from them hold.
pub(crate) fn select_rows(x: Tensor<2>, drop: &Tensor<1, Bool>) -> Tensor<2> {
    let [r, k] = x.dims();
    if r == 0 || k == 0 {
        return x;
    }
    let mask = drop.clone().reshape([r, 1]).expand([r, k]);
    x.mask_fill(mask, 1.0)
}

/// Flattens `[..., V]` to `[R, V]` and returns the leading dims. `f16`, `bf16` and `flex32`
/// inputs are cast to `f32` (the losses compute in at least `f32`).
///
/// An empty leading dimension (`[B, 0, V]`) gives `[0, V]` rows, still tracked by autodiff.
pub(crate) fn flatten_rows<const D: usize>(t: Tensor<D>) -> (Tensor<2>, Vec<usize>, usize) {
    flatten_rows_native(at_least_f32(t))
}

/// [`flatten_rows`] in the tensor's own dtype (`f16`/`bf16` stay as they are: the fused
/// kernels read them; the composed rows widen them with [`same_dtype`]).
pub(crate) fn flatten_rows_native<const D: usize>(t: Tensor<D>) -> (Tensor<2>, Vec<usize>, usize) {
    assert!(D >= 1, "logits must have at least one dimension");
    let dims = t.dims();
    let v = dims[D - 1];
    let lead = dims[..D - 1].to_vec();
    let r: usize = lead.iter().product();
    // `reshape` reads a 0 in the target shape as "keep this dimension" (`[B, 0, V]` → `[0, V]`
    // fails); `flatten` takes the shape as given.
    let flat = if D >= 2 {
        t.flatten::<2>(0, D - 2)
    } else {
        t.reshape([r, v])
    };
    (flat, lead, v)
}

/// Flattens labels of any rank to `[R]` (an empty leading dimension included).
pub(crate) fn flatten_labels<const D: usize>(labels: Tensor<D, Int>) -> Tensor<1, Int> {
    labels.flatten::<1>(0, D - 1)
}

/// `x` cast to `f32` when its dtype is narrower (`f16`, `bf16`, `flex32`), as is otherwise.
pub(crate) fn at_least_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match x.dtype() {
        DType::F64 | DType::F32 => x,
        _ => x.cast(FloatDType::F32),
    }
}

/// Student and teacher in one dtype, the wider of the two (after [`at_least_f32`]).
pub(crate) fn same_dtype<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    let (a, b) = (at_least_f32(a), at_least_f32(b));
    match (a.dtype(), b.dtype()) {
        (x, y) if x == y => (a, b),
        (DType::F64, _) => (a, b.cast(FloatDType::F64)),
        _ => (a.cast(FloatDType::F64), b),
    }
}

/// Panics with Burn-style wording when two row shapes differ.
pub(crate) fn assert_same_dims(name: &str, got: &[usize], expected: &[usize]) {
    assert!(
        got == expected,
        "{name}: shape {got:?} does not match the loss rows {expected:?}"
    );
}

/// Checks that student and teacher logits have the same shape, and that the last dimension (the
/// classes of a distribution) is not empty.
pub(crate) fn assert_same_shape(student: &[usize], teacher: &[usize]) {
    assert!(
        student == teacher,
        "teacher_logits: shape {teacher:?} does not match student_logits shape {student:?}"
    );
    assert_classes("student_logits", student);
}

/// Panics unless the last dimension of `dims` (the classes) is at least 1.
pub(crate) fn assert_classes(name: &str, dims: &[usize]) {
    assert!(
        dims.last().is_some_and(|&v| v > 0),
        "{name}: shape {dims:?} has an empty last dimension; a distribution needs at least one class"
    );
}

/// `φ(d)/d² = (e^{−d} − 1 + d)/d²` by its Taylor series, for `|d| ≤ ½` (relative error below
/// 3e-9).
fn phi_over_d2(d: Tensor<2>) -> Tensor<2> {
    const C: [f64; 8] = crate::numerics::PHI_OVER_D2_TAYLOR;
    let mut h = d.zeros_like().add_scalar(C[7]);
    for &c in C[..7].iter().rev() {
        h = h.mul(d.clone()).add_scalar(c);
    }
    h
}

/// Per-row forward KL `Σ_v p_v (log p_v − log q_v)` from log-probabilities `[R, V]`, with the
/// convention `0 · log 0 = 0` (entries with `p_v = 0` contribute 0 and no gradient). For inputs
/// that need not be normalised (a top-k support, DKD's parts); normalised distributions go
/// through [`kl_rows_normalized`].
pub(crate) fn kl_rows_from_log_probs(log_p: Tensor<2>, log_q: Tensor<2>) -> Tensor<1> {
    let r = log_p.dims()[0];
    let p = log_p.clone().exp();
    let zero = p.clone().equal_elem(0.0);
    // Mask the log-ratio before multiplying: at p = 0 it may be NaN (-inf - -inf), and
    // 0 · NaN in the backward pass would poison the gradient of `p` (reverse KL, where the
    // student is the first argument).
    let terms = p.mul(log_p.sub(log_q).mask_fill(zero, 0.0));
    terms.sum_dim(1).reshape([r])
}

/// `log(1 + x)`, accurate for tiny `x` on every backend (some compute `log1p` as `log(1 + x)`,
/// which loses all digits of an `x` below the `f32` epsilon): `x − x²/2 + x³/3` for
/// `|x| ≤ 1e-3` (relative error below 1e-9), `log1p` elsewhere.
fn log1p_small<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let small = x.clone().abs().lower_equal_elem(1e-3);
    let xs = x.clone().mask_fill(small.clone().bool_not(), 0.0);
    let series = xs.clone().mul(
        xs.clone()
            .mul_scalar(1.0 / 3.0)
            .sub_scalar(0.5)
            .mul(xs)
            .add_scalar(1.0),
    );
    let large = x.clone().mask_fill(small.clone(), 0.0).log1p();
    large.mask_where(small, series)
}

/// [`kl_rows_from_log_probs`] for rows that are both normalised distributions (each sums to 1,
/// or is empty), computed without cancellation: with `d = log p − log q` (`f32`, carrying the rounding `δ`
/// of the two log-normalisers),
/// ```text
/// D1 = Σ_{p>0} p·d,   D2 = Σ_{p>0} p·φ(d) + Σ_{p=0} q,   φ(d) = e^{−d} − 1 + d ≥ 0
/// KL = D1 + log1p(D2 − D1)
/// ```
/// is exact in exact arithmetic and cancels `δ` to first order: the naive `D1` alone is off by
/// `δ ≈ 1e-7 · log V`, which at high temperatures (`KL ~ 1/T²`) is larger than the KL itself
/// and can make it negative. `φ` uses its Taylor series for `|d| ≤ ½`. (The identity needs
/// `Σ q = 1`: a sub-normalised `q` would be renormalised.)
pub(crate) fn kl_rows_normalized(log_p: Tensor<2>, log_q: Tensor<2>) -> Tensor<1> {
    let r = log_p.dims()[0];
    let p = log_p.clone().exp();
    let zero = p.clone().equal_elem(0.0);
    let p_sum = p.clone().detach().sum_dim(1);
    // Mask the log-ratio before multiplying: at p = 0 it may be NaN (-inf - -inf), and
    // 0 · NaN in the backward pass would poison the gradient of `p` (reverse KL, where the
    // student is the first argument).
    let d = log_p.sub(log_q.clone()).mask_fill(zero.clone(), 0.0);
    let d1 = p.clone().mul(d.clone()).sum_dim(1);
    // φ: series where |d| ≤ ½ (its input clamped elsewhere, so the unused branch stays finite in
    // the backward pass), `q − p + p·d` elsewhere, `q` where p = 0.
    let small = d.clone().abs().lower_equal_elem(0.5);
    let d_small = d.clone().mask_fill(small.clone().bool_not(), 0.0);
    let series = p
        .clone()
        .mul(d_small.clone().square().mul(phi_over_d2(d_small)));
    let q = log_q.exp();
    let direct = q.clone().sub(p.clone()).add(p.mul(d));
    let terms = direct.mask_where(small, series).mask_where(zero, q);
    let d2 = terms.sum_dim(1);
    // Where D1 is not finite (a student -inf under teacher mass: +inf; NaN logits) it is the
    // answer; the correction would turn inf − inf into NaN.
    let finite = d1.clone().is_finite();
    let d1_safe = d1.clone().mask_fill(finite.clone().bool_not(), 0.0);
    let d2_safe = d2.mask_fill(finite.clone().bool_not(), 0.0);
    let corr = log1p_small(d2_safe.sub(d1_safe.clone()));
    let kl = d1_safe.clone().add(corr.clone());
    // Rounding may leave a KL of 0 slightly negative: lift the value (not the gradient) to 0
    // within 4 ulp of the two parts; anything more negative is kept (it would be a bug).
    let tol = d1_safe
        .abs()
        .add(corr.abs())
        .mul_scalar(4.0 * f64::from(f32::EPSILON));
    let lift = kl
        .clone()
        .detach()
        .neg()
        .clamp_min(0.0)
        .mask_fill(kl.clone().detach().add(tol).lower_elem(0.0), 0.0);
    let kl = kl.add(lift.detach());
    // An empty first distribution (an all -inf row) has no terms: 0 with a zero gradient.
    let empty = p_sum.equal_elem(0.0);
    kl.mask_where(finite.bool_not(), d1)
        .mask_fill(empty, 0.0)
        .reshape([r])
}

/// `log(w·a + (1−w)·b)` from log-probabilities, `w ∈ [0, 1]`, stable and NaN-free: entries
/// where both sides are `-inf` give `-inf` with a zero gradient.
///
/// `w = 0` or `1` is not short-cut: the side with weight 0 gets `log 0 = -inf` and stays in the
/// graph with a zero gradient, so the loss is still tracked (a `backward` on it works) and its
/// value is exactly the other side.
pub(crate) fn log_mix(log_a: Tensor<2>, w: f64, log_b: Tensor<2>) -> Tensor<2> {
    log_add_exp(log_a.add_scalar(w.ln()), log_b.add_scalar((1.0 - w).ln()))
}

/// Elementwise `log(exp(x) + exp(y))` with `-inf` handled: both `-inf` gives `-inf` and a zero
/// gradient (the "double where" guard keeps `0 · inf` out of the backward pass).
pub(crate) fn log_add_exp<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
    let m = x.clone().detach().max_pair(y.clone().detach());
    let m = m.clone().mask_fill(m.is_inf(), 0.0);
    let s = x.sub(m.clone()).exp().add(y.sub(m.clone()).exp());
    let empty = s.clone().equal_elem(0.0);
    let log_s = s
        .mask_fill(empty.clone(), 1.0)
        .log()
        .mask_fill(empty, f32::NEG_INFINITY);
    log_s.add(m)
}

/// `[R, K]` logits with every row that holds a `+inf` turned into its point mass (the
/// convention of `temperature_log_softmax`): `0` at the `+inf` entries, `-inf` elsewhere, no
/// gradient into such a row's entries. Rows without `+inf` are unchanged.
pub(crate) fn point_masses(x: Tensor<2>) -> Tensor<2> {
    let pos_inf = x.clone().equal_elem(f32::INFINITY);
    let has = pos_inf
        .clone()
        .int()
        .sum_dim(1)
        .greater_elem(0)
        .expand(x.dims());
    let point = Tensor::<2>::zeros(x.dims(), &x.device())
        .cast(x.dtype())
        .mask_fill(pos_inf.bool_not(), f32::NEG_INFINITY);
    x.mask_where(has, point)
}

/// Row-wise `log Σ exp(x)` over the last dim of `[R, K]`, giving `[R]`; an all `-inf` row
/// gives `-inf` with a zero gradient.
pub(crate) fn row_logsumexp(x: Tensor<2>) -> Tensor<1> {
    let r = x.dims()[0];
    let m = x.clone().detach().max_dim(1);
    let m = m.clone().mask_fill(m.is_inf(), 0.0);
    let s = x.sub(m.clone()).exp().sum_dim(1);
    let empty = s.clone().equal_elem(0.0);
    let log_s = s
        .mask_fill(empty.clone(), 1.0)
        .log()
        .mask_fill(empty, f32::NEG_INFINITY);
    log_s.add(m).reshape([r])
}
