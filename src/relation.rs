//! Relational knowledge distillation on batches of embeddings `[B, D]`: the student learns the
//! **structure** of the teacher's batch (distances, angles, similarities), so the two widths
//! `D_s` and `D_t` may differ and no projection is needed.
//!
//! | loss | formula | reference |
//! |---|---|---|
//! | [`rkd_distance`] | `mean_{i,j} huber(d_s(i,j)/μ_s − d_t(i,j)/μ_t)` | Park et al. 2019 |
//! | [`rkd_angle`] | `mean_{i,j,k} huber(⟨e_s(i→j), e_s(i→k)⟩ − ⟨e_t(i→j), e_t(i→k)⟩)` | Park et al. 2019 |
//! | [`similarity_preserving`] | `‖Ĝ_s − Ĝ_t‖_F² / B²`, `Ĝ` = row-normalized `X Xᵀ` | Tung & Mori 2019 |
//!
//! `huber` is the smooth-L1 function with `δ = 1` (`0.5 x²` for `|x| < 1`, `|x| − 0.5`
//! otherwise), as in the authors' code. All three return a scalar `[1]` (the batch is the unit:
//! there are no independent rows to mask; select the rows before calling). The teacher is
//! detached.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use crate::combine::LossTerms;
use crate::error::{KdError, check_range};
use crate::hidden::l2_normalize_rows;
use crate::numerics::NORM_EPS;

fn check_batch(s: &[usize; 2], t: &[usize; 2]) {
    assert!(
        s[0] == t[0],
        "teacher_embeddings: batch {} (shape {t:?}) does not match student_embeddings batch {} (shape {s:?})",
        t[0],
        s[0]
    );
}

/// Smooth-L1 (Huber, `δ = 1`) elementwise.
fn smooth_l1<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let a = x.clone().abs();
    let big = a.clone().greater_equal_elem(1.0);
    x.square()
        .mul_scalar(0.5)
        .mask_where(big, a.sub_scalar(0.5))
}

fn off_diagonal(b: usize, device: &burn::tensor::Device) -> Tensor<2, Bool> {
    Tensor::<2>::eye(b, device).equal_elem(0.0)
}

/// Pairwise Euclidean distances `[B, B]` divided by their mean over `i ≠ j`; diagonal 0.
fn normalized_distances(x: Tensor<2>) -> Tensor<2> {
    let [b, d] = x.dims();
    let device = x.device();
    let diff = x.clone().reshape([b, 1, d]).sub(x.reshape([1, b, d]));
    let sq = diff.square().sum_dim(2).reshape([b, b]);
    let off = off_diagonal(b, &device);
    let dist = sq
        .clamp_min(NORM_EPS)
        .sqrt()
        .mask_fill(off.clone().bool_not(), 0.0);
    let pairs = (b * (b - 1)).max(1) as f64;
    let mean = dist.clone().sum().div_scalar(pairs).clamp_min(NORM_EPS);
    dist.div(mean.reshape([1, 1]))
}

/// RKD distance loss: the student's pairwise distances, each divided by the batch's mean
/// distance, match the teacher's under the smooth-L1 loss.
///
/// ```text
/// ψ(i, j) = ‖x_i − x_j‖ / μ,    μ = 1/(B(B−1)) Σ_{i≠j} ‖x_i − x_j‖      (ψ(i, i) = 0)
/// L = 1/B² Σ_{i,j} huber(ψ_s(i, j) − ψ_t(i, j))                          (δ = 1; authors' mean over B²)
/// ```
///
/// Invariant to rotating, translating or uniformly scaling either embedding set.
///
/// # Shapes
/// - `student_embeddings`: `[B, D_s]`, `teacher_embeddings`: `[B, D_t]`
/// - returns `[1]`
///
/// # Panics
/// If the batch sizes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::rkd_distance;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], &device);
/// let t = Tensor::cat(vec![s.clone().mul_scalar(10.0), Tensor::zeros([3, 1], &device)], 1); // scaled, wider
/// assert!(rkd_distance(s, t).into_scalar::<f32>().abs() < 1e-6);
/// ```
///
/// # References
/// Park, Kim, Lu, Cho, *Relational Knowledge Distillation*, CVPR 2019.
pub fn rkd_distance(student_embeddings: Tensor<2>, teacher_embeddings: Tensor<2>) -> Tensor<1> {
    let (sd, td) = (student_embeddings.dims(), teacher_embeddings.dims());
    check_batch(&sd, &td);
    let ps = normalized_distances(student_embeddings);
    let pt = normalized_distances(teacher_embeddings.detach());
    smooth_l1(ps.sub(pt)).mean()
}

/// Cosines `[B, B, B]` of the angles at each anchor `i` between `i → j` and `i → k`.
fn angles(x: Tensor<2>) -> Tensor<3> {
    let [b, d] = x.dims();
    let device = x.device();
    // e[i, j] = unit(x_j − x_i); e[i, i] = 0.
    let diff = x.clone().reshape([1, b, d]).sub(x.reshape([b, 1, d]));
    let e = l2_normalize_rows(diff.reshape([b * b, d]), NORM_EPS).reshape([b, b, d]);
    let diag = off_diagonal(b, &device)
        .bool_not()
        .reshape([b, b, 1])
        .expand([b, b, d]);
    let e = e.mask_fill(diag, 0.0);
    e.clone().matmul(e.swap_dims(1, 2))
}

/// RKD angle loss: the cosines of the angles formed by every triplet of embeddings match the
/// teacher's under the smooth-L1 loss.
///
/// ```text
/// e(i→j) = (x_j − x_i) / ‖x_j − x_i‖        (0 when j = i)
/// ψ(i, j, k) = ⟨e(i→j), e(i→k)⟩
/// L = 1/B³ Σ_{i,j,k} huber(ψ_s(i, j, k) − ψ_t(i, j, k))    (δ = 1; authors' mean over B³)
/// ```
///
/// # Shapes
/// - `student_embeddings`: `[B, D_s]`, `teacher_embeddings`: `[B, D_t]`
/// - returns `[1]` (memory `O(B³ + B² D)`)
///
/// # Panics
/// If the batch sizes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::rkd_angle;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]], &device);
/// assert!(rkd_angle(s, t).into_scalar::<f32>() > 0.0); // 90° vs 45° at the origin
/// ```
///
/// # References
/// Park, Kim, Lu, Cho, *Relational Knowledge Distillation*, CVPR 2019.
pub fn rkd_angle(student_embeddings: Tensor<2>, teacher_embeddings: Tensor<2>) -> Tensor<1> {
    let (sd, td) = (student_embeddings.dims(), teacher_embeddings.dims());
    check_batch(&sd, &td);
    let a_s = angles(student_embeddings);
    let a_t = angles(teacher_embeddings.detach());
    smooth_l1(a_s.sub(a_t)).mean()
}

/// Similarity-preserving loss: the row-normalized batch Gram matrices of student and teacher
/// should agree.
///
/// ```text
/// G = X Xᵀ  [B, B],    Ĝ_i = G_i / max(‖G_i‖₂, 1e-12)     (each row to unit L2 norm)
/// L = 1/B² · ‖Ĝ_t − Ĝ_s‖_F²
/// ```
///
/// For convolutional features, flatten each example to a vector first (`[B, C·H·W]`).
///
/// # Shapes
/// - `student_embeddings`: `[B, D_s]`, `teacher_embeddings`: `[B, D_t]`
/// - returns `[1]`
///
/// # Panics
/// If the batch sizes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::similarity_preserving;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 3.0, 0.0], [0.0, 0.0, 3.0]], &device);
/// assert!(similarity_preserving(s, t).into_scalar::<f32>().abs() < 1e-7);
/// ```
///
/// # References
/// Tung, Mori, *Similarity-Preserving Knowledge Distillation*, ICCV 2019.
pub fn similarity_preserving(
    student_embeddings: Tensor<2>,
    teacher_embeddings: Tensor<2>,
) -> Tensor<1> {
    let (sd, td) = (student_embeddings.dims(), teacher_embeddings.dims());
    check_batch(&sd, &td);
    let b = sd[0];
    let gram = |x: Tensor<2>| l2_normalize_rows(x.clone().matmul(x.transpose()), NORM_EPS);
    let gs = gram(student_embeddings);
    let gt = gram(teacher_embeddings.detach());
    gs.sub(gt).square().sum().div_scalar((b * b).max(1) as f64)
}

/// Configuration of [`RkdLoss`]: the weights of the distance and angle terms.
///
/// Park et al. use `25` and `50` on metric-learning embeddings; the defaults here are `1` and `2`
/// (the same ratio) so that the scale is the caller's choice.
#[derive(Config, Debug)]
pub struct RkdLossConfig {
    /// Weight of [`rkd_distance`] (finite, ≥ 0).
    #[config(default = 1.0)]
    pub distance_weight: f64,
    /// Weight of [`rkd_angle`] (finite, ≥ 0).
    #[config(default = 2.0)]
    pub angle_weight: f64,
}

impl RkdLossConfig {
    /// Builds the loss, validating the weights.
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] for a negative, infinite or NaN weight.
    pub fn try_init(&self) -> Result<RkdLoss, KdError> {
        check_range("distance_weight", self.distance_weight, 0.0, f64::MAX)?;
        check_range("angle_weight", self.angle_weight, 0.0, f64::MAX)?;
        Ok(RkdLoss {
            distance_weight: self.distance_weight,
            angle_weight: self.angle_weight,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid weight (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> RkdLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Relational KD (distance + angle), reported as terms `"rkd_distance"` and `"rkd_angle"` with
/// their weights; `total()` is `w_d · L_distance + w_a · L_angle`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::RkdLossConfig;
///
/// let device = Device::flex();
/// let rkd = RkdLossConfig::new().with_distance_weight(25.0).with_angle_weight(50.0).init();
/// let s = Tensor::<2>::from_floats([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], &device);
/// let terms = rkd.forward(s.clone(), s);
/// assert!(terms.total().into_scalar::<f32>().abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct RkdLoss {
    /// Weight of the distance term.
    pub distance_weight: f64,
    /// Weight of the angle term.
    pub angle_weight: f64,
}

impl RkdLoss {
    /// Both terms; see [`rkd_distance`] and [`rkd_angle`].
    ///
    /// # Panics
    /// If the batch sizes differ.
    pub fn forward(
        &self,
        student_embeddings: Tensor<2>,
        teacher_embeddings: Tensor<2>,
    ) -> LossTerms {
        let d = rkd_distance(student_embeddings.clone(), teacher_embeddings.clone());
        let a = rkd_angle(student_embeddings, teacher_embeddings);
        LossTerms::new()
            .with("rkd_distance", self.distance_weight, d)
            .and_then(|t| t.with("rkd_angle", self.angle_weight, a))
            .expect("weights validated by the config")
    }
}
