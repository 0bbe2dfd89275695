//! Hidden-state distillation: MSE with a learnable projection (TinyBERT, TextBrewer), cosine
//! (DistilBERT) and normalized MSE (PKD), for one layer or for many through a [`LayerMap`].
//!
//! ```text
//! ĥ_s = h_s · W + b                     (W: [D_s, D_t], stored [in, out]; identity when absent)
//! mse row          r = Σ_d (ĥ_s,d − h_t,d)²
//! cosine row       r = 1 − ⟨ĥ_s, h_t⟩ / sqrt((|ĥ_s|² + 1e-12) · (|h_t|² + 1e-12))
//! normalized row   r = Σ_d (ĥ_s,d / max(|ĥ_s|, 1e-12) − h_t,d / max(|h_t|, 1e-12))²
//! ```
//!
//! A **row** is one token (`[B, S, D]` has `B·S` rows). Every function returns a [`RowLoss`], so
//! a `[B, S]` token mask and the reduction are explicit steps:
//!
//! | loss | reduction | value |
//! |---|---|---|
//! | MSE, TextBrewer `hid_mse_loss` | [`Reduction::ElementMean`] | `Σ m·(ĥ_s − h_t)² / (max(Σm, 1) · D_t)` |
//! | cosine, DistilBERT / TextBrewer `cos_loss` | [`Reduction::Mean`] | `Σ m·(1 − cos) / max(Σm, 1)` |
//! | normalized MSE, PKD | [`Reduction::Sum`] or `Mean` | `Σ m·‖ĥ_s/‖ĥ_s‖ − h_t/‖h_t‖‖²` (÷ `max(Σm,1)`) |
//!
//! The projection `W` is a Burn [`Module`] ([`HiddenProjection`], built by
//! [`HiddenProjectionConfig`]): put it in the student's module tree (or hand it to the optimizer
//! together with the student) and it trains with the student. The teacher is always detached.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::combine::LossTerms;
use crate::error::{KdError, check_positive};
use crate::layer_map::LayerMap;
use crate::reduction::{Reduction, RowLoss, RowMask, flatten_rows, same_dtype};

/// ε inside the cosine's square root (PyTorch `cosine_embedding_loss`).
pub const COSINE_EPS: f64 = 1e-12;
/// Smallest norm a vector is divided by in [`hidden_normalized_mse`] (PyTorch `F.normalize`).
pub const NORMALIZE_EPS: f64 = 1e-12;

// ---------------------------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------------------------

/// How a projection's weight `W` (and bias) starts.
#[derive(Config, Debug, PartialEq)]
pub enum ProjectionInit {
    /// Burn's `Linear` default (Kaiming uniform, `U(−1/√D_s, 1/√D_s)` for weight and bias).
    LinearDefault,
    /// `W[i, j] = 1` if `i == j`, else 0 (a rectangular identity: truncates or zero-pads the
    /// student vector), bias 0. The loss starts as the plain MSE on the shared coordinates.
    Identity,
    /// `W = 0`, bias 0.
    Zeros,
    /// Any Burn initializer, for the weight and the bias (TinyBERT uses
    /// `Initializer::Normal { mean: 0.0, std: 0.02 }`).
    Burn(Initializer),
}

/// Configuration of a [`HiddenProjection`] from the student width `D_s` to the teacher width `D_t`.
///
/// When `d_student == d_teacher` and `force` is `false`, [`init`](Self::init) builds the
/// **identity** (no parameters); otherwise a learnable `W: [D_s, D_t]` (plus a bias when `bias`).
#[derive(Config, Debug)]
pub struct HiddenProjectionConfig {
    /// Student hidden size `D_s` (input of the projection).
    pub d_student: usize,
    /// Teacher hidden size `D_t` (output of the projection).
    pub d_teacher: usize,
    /// Whether the projection has a bias `b: [D_t]`.
    #[config(default = true)]
    pub bias: bool,
    /// Initialization of `W` and `b`.
    #[config(default = "ProjectionInit::LinearDefault")]
    pub init: ProjectionInit,
    /// Build a learnable projection even when `d_student == d_teacher`.
    #[config(default = false)]
    pub force: bool,
}

impl HiddenProjectionConfig {
    /// Builds the projection on `device`, validating the sizes.
    ///
    /// # Errors
    /// [`KdError::NotPositive`] when `d_student` or `d_teacher` is 0.
    pub fn try_init(&self, device: &Device) -> Result<HiddenProjection, KdError> {
        check_positive("d_student", self.d_student as f64)?;
        check_positive("d_teacher", self.d_teacher as f64)?;
        if self.d_student == self.d_teacher && !self.force {
            return Ok(HiddenProjection::identity());
        }
        let (din, dout) = (self.d_student, self.d_teacher);
        let base = LinearConfig::new(din, dout).with_bias(self.bias);
        let linear = match &self.init {
            ProjectionInit::LinearDefault => base.init(device),
            ProjectionInit::Burn(init) => base.with_initializer(init.clone()).init(device),
            ProjectionInit::Identity | ProjectionInit::Zeros => {
                let weight = if self.init == ProjectionInit::Identity {
                    let n = din.max(dout);
                    Tensor::<2>::eye(n, device).slice([0..din, 0..dout])
                } else {
                    Tensor::<2>::zeros([din, dout], device)
                };
                Linear {
                    weight: Param::from_tensor(weight),
                    bias: self
                        .bias
                        .then(|| Param::from_tensor(Tensor::<1>::zeros([dout], device))),
                }
            }
        };
        Ok(HiddenProjection {
            linear: Some(linear),
        })
    }

    /// Builds the projection.
    ///
    /// # Panics
    /// On a zero size (see [`try_init`](Self::try_init)).
    pub fn init(&self, device: &Device) -> HiddenProjection {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A learnable map from the student's hidden size to the teacher's, `ĥ = h · W + b`, or the
/// identity.
///
/// `W` is stored `[in, out] = [D_s, D_t]` (Burn's `Linear` layout, the transpose of PyTorch's
/// `nn.Linear.weight`).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::hidden::HiddenProjectionConfig;
///
/// let device = Device::flex();
/// let proj = HiddenProjectionConfig::new(3, 5).init(&device);
/// let h = Tensor::<3>::zeros([2, 4, 3], &device);
/// assert_eq!(proj.forward(h).dims(), [2, 4, 5]);
/// assert!(HiddenProjectionConfig::new(5, 5).init(&device).is_identity());
/// ```
#[derive(Module, Debug)]
pub struct HiddenProjection {
    /// The linear map; `None` is the identity.
    pub linear: Option<Linear>,
}

impl HiddenProjection {
    /// The identity (no parameters).
    pub fn identity() -> Self {
        HiddenProjection { linear: None }
    }

    /// A projection with the given weight `W: [D_s, D_t]` and optional bias `b: [D_t]`
    /// (trainable parameters).
    ///
    /// # Panics
    /// If the bias length differs from `W`'s output size.
    pub fn from_tensors(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let [_, dout] = weight.dims();
        if let Some(b) = &bias {
            assert!(
                b.dims()[0] == dout,
                "bias: shape {:?} does not match the projection weight [in, out] = {:?}",
                b.dims(),
                weight.dims()
            );
        }
        HiddenProjection {
            linear: Some(Linear {
                weight: Param::from_tensor(weight),
                bias: bias.map(Param::from_tensor),
            }),
        }
    }

    /// Whether this is the identity.
    pub fn is_identity(&self) -> bool {
        self.linear.is_none()
    }

    /// `W: [D_s, D_t]`, or `None` for the identity.
    pub fn weight(&self) -> Option<Tensor<2>> {
        self.linear.as_ref().map(|l| l.weight.val())
    }

    /// `b: [D_t]`, or `None` (identity or no bias).
    pub fn bias(&self) -> Option<Tensor<1>> {
        self.linear
            .as_ref()
            .and_then(|l| l.bias.as_ref().map(|b| b.val()))
    }

    /// `(D_s, D_t)`, or `None` for the identity.
    pub fn dims(&self) -> Option<(usize, usize)> {
        self.linear.as_ref().map(|l| {
            let [i, o] = l.weight.shape().dims();
            (i, o)
        })
    }

    /// Projects `student_hidden: [..., D_s]` to `[..., D_t]` (unchanged for the identity).
    ///
    /// # Panics
    /// If the last dimension of `student_hidden` is not `D_s`.
    pub fn forward<const D: usize>(&self, student_hidden: Tensor<D>) -> Tensor<D> {
        match &self.linear {
            None => student_hidden,
            Some(l) => {
                let w = l.weight.val();
                let [din, _] = w.dims();
                let dims = student_hidden.dims();
                assert!(
                    dims[D - 1] == din,
                    "student_hidden: shape {dims:?} does not match the projection weight \
                     [in, out] = {:?} (last dimension must be {din})",
                    w.dims()
                );
                l.forward(student_hidden)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure per-row distances
// ---------------------------------------------------------------------------------------------

fn assert_same_hidden(student: &[usize], teacher: &[usize]) {
    assert!(
        student == teacher,
        "teacher_hidden: shape {teacher:?} does not match student_hidden shape {student:?} \
         (project the student to the teacher's width first)"
    );
}

/// Hidden-state MSE per token: `r = Σ_d (h_s,d − h_t,d)²` (the student already projected).
///
/// ```text
/// r_i = Σ_d (s_id − t_id)²                       ∂r_i/∂s_id = 2 (s_id − t_id)
/// ElementMean:  Σ_i m_i r_i / (max(Σ_i m_i, 1) · D)     (TextBrewer hid_mse_loss, masked)
/// ```
///
/// The teacher is detached.
///
/// # Shapes
/// - `student_hidden`, `teacher_hidden`: `[..., D]` (`[B, S, D]` or `[N, D]`), equal shapes
/// - returns a [`RowLoss`] with one row per token, `row_size = D`
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<3>::from_floats([[[1.0, 0.0], [9.0, 9.0]]], &device);
/// let t = Tensor::<3>::from_floats([[[0.0, 0.0], [0.0, 0.0]]], &device);
/// let mask = RowMask::new(Tensor::<2, Bool>::from_data([[true, false]], &device));
/// let loss = hidden_mse(s, t).masked(&mask).reduce(Reduction::ElementMean);
/// assert_eq!(loss.into_scalar::<f32>(), 0.5); // 1 / (1 token · 2 dims)
/// ```
///
/// # References
/// Jiao et al., *TinyBERT*, 2020; Yang et al., *TextBrewer*, 2020.
pub fn hidden_mse<const D: usize>(student_hidden: Tensor<D>, teacher_hidden: Tensor<D>) -> RowLoss {
    assert_same_hidden(&student_hidden.dims(), &teacher_hidden.dims());
    let (student_hidden, teacher_hidden) = same_dtype(student_hidden, teacher_hidden);
    let (s, rows, d) = flatten_rows(student_hidden);
    let (t, _, _) = flatten_rows(teacher_hidden.detach());
    RowLoss::squares(s, t, &rows, d, false, false)
}

/// Cosine distance per token (DistilBERT): `r = 1 − cos(h_s, h_t)`.
///
/// ```text
/// cos_i = ⟨s_i, t_i⟩ / sqrt((|s_i|² + ε)(|t_i|² + ε)),  ε = 1e-12   (PyTorch cosine_embedding_loss)
/// r_i   = 1 − cos_i                                       ∂r_i/∂s_i = −(t_i/den − cos_i · s_i/(|s_i|² + ε))
/// Mean: Σ_i m_i r_i / max(Σ_i m_i, 1)                    (TextBrewer cos_loss)
/// ```
///
/// A zero vector has `cos = 0` (row value 1) and a finite gradient. The teacher is detached.
///
/// # Shapes
/// - `student_hidden`, `teacher_hidden`: `[..., D]`, equal shapes
/// - returns a [`RowLoss`] with one row per token, `row_size = D`
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 2.0]], &device);
/// let t = Tensor::<2>::from_floats([[3.0, 0.0], [2.0, 0.0]], &device);
/// let v = hidden_cosine(s, t).values().into_data().try_to_vec::<f32>().unwrap();
/// assert!(v[0].abs() < 1e-6 && (v[1] - 1.0).abs() < 1e-6);
/// ```
///
/// # References
/// Sanh et al., *DistilBERT*, 2019.
pub fn hidden_cosine<const D: usize>(
    student_hidden: Tensor<D>,
    teacher_hidden: Tensor<D>,
) -> RowLoss {
    assert_same_hidden(&student_hidden.dims(), &teacher_hidden.dims());
    let (student_hidden, teacher_hidden) = same_dtype(student_hidden, teacher_hidden);
    let (s, rows, d) = flatten_rows(student_hidden);
    let (t, _, _) = flatten_rows(teacher_hidden.detach());
    RowLoss::from_rows(vec![s, t], &rows, d, |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        let n = s.dims()[0];
        let dot = s.clone().mul(t.clone()).sum_dim(1);
        let ss = s.square().sum_dim(1).add_scalar(COSINE_EPS);
        let tt = t.square().sum_dim(1).add_scalar(COSINE_EPS);
        let cos = dot.div(ss.mul(tt).sqrt());
        cos.neg().add_scalar(1.0).reshape([n])
    })
}

/// `x / max(|x|, ε)` over the last dimension of `[R, D]`, with a zero gradient through the norm
/// where it is clamped (no NaN at a zero vector).
pub(crate) fn l2_normalize_rows(x: Tensor<2>, eps: f64) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).clamp_min(eps * eps).sqrt();
    x.div(norm)
}

/// PKD's normalized MSE per token: both vectors scaled to unit L2 norm, then the squared
/// distance `r = ‖ĥ_s/‖ĥ_s‖ − h_t/‖h_t‖‖² = 2 − 2 cos`.
///
/// ```text
/// u_i = s_i / max(|s_i|, 1e-12),   v_i = t_i / max(|t_i|, 1e-12)
/// r_i = Σ_d (u_id − v_id)²
/// ```
///
/// PKD (Sun et al. 2019) sums this over the distilled layers' `[CLS]` vectors and averages over
/// the batch: select the `[CLS]` rows (or mask the others) and use [`Reduction::Mean`]. The
/// teacher is detached.
///
/// # Shapes
/// - `student_hidden`, `teacher_hidden`: `[..., D]`, equal shapes
/// - returns a [`RowLoss`] with one row per vector, `row_size = D`
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[10.0, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 0.5]], &device);
/// let v = hidden_normalized_mse(s, t).reduce(Reduction::Sum).into_scalar::<f32>();
/// assert!((v - 2.0).abs() < 1e-6); // orthogonal unit vectors
/// ```
///
/// # References
/// Sun et al., *Patient Knowledge Distillation for BERT Model Compression*, 2019.
pub fn hidden_normalized_mse<const D: usize>(
    student_hidden: Tensor<D>,
    teacher_hidden: Tensor<D>,
) -> RowLoss {
    assert_same_hidden(&student_hidden.dims(), &teacher_hidden.dims());
    let (student_hidden, teacher_hidden) = same_dtype(student_hidden, teacher_hidden);
    let (s, rows, d) = flatten_rows(student_hidden);
    let (t, _, _) = flatten_rows(teacher_hidden.detach());
    RowLoss::from_rows(vec![s, t], &rows, d, |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        let n = s.dims()[0];
        let u = l2_normalize_rows(s, NORMALIZE_EPS);
        let v = l2_normalize_rows(t, NORMALIZE_EPS);
        u.sub(v).square().sum_dim(1).reshape([n])
    })
}

/// Which per-token distance a [`HiddenLoss`] uses.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum HiddenDistance {
    /// [`hidden_mse`] (TinyBERT, TextBrewer); pair it with [`Reduction::ElementMean`].
    Mse,
    /// [`hidden_cosine`] (DistilBERT); pair it with [`Reduction::Mean`].
    Cosine,
    /// [`hidden_normalized_mse`] (PKD); pair it with [`Reduction::Mean`] or `Sum`.
    NormalizedMse,
}

impl HiddenDistance {
    /// The per-token values of this distance (the student already projected).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn rows<const D: usize>(
        self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
    ) -> RowLoss {
        match self {
            HiddenDistance::Mse => hidden_mse(student_hidden, teacher_hidden),
            HiddenDistance::Cosine => hidden_cosine(student_hidden, teacher_hidden),
            HiddenDistance::NormalizedMse => hidden_normalized_mse(student_hidden, teacher_hidden),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Single-layer module
// ---------------------------------------------------------------------------------------------

/// Configuration of [`HiddenLoss`]: a projection and a distance.
#[derive(Config, Debug)]
pub struct HiddenLossConfig {
    /// The student → teacher projection (identity when the widths match and it is not forced).
    pub projection: HiddenProjectionConfig,
    /// The per-token distance.
    #[config(default = "HiddenDistance::Mse")]
    pub distance: HiddenDistance,
}

impl HiddenLossConfig {
    /// Builds the loss and its projection on `device`.
    ///
    /// # Errors
    /// See [`HiddenProjectionConfig::try_init`].
    pub fn try_init(&self, device: &Device) -> Result<HiddenLoss, KdError> {
        Ok(HiddenLoss {
            projection: self.projection.try_init(device)?,
            distance: self.distance,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid projection size.
    pub fn init(&self, device: &Device) -> HiddenLoss {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Hidden-state loss of one layer with a learnable projection: the distance between
/// `h_s · W + b` and `h_t` per token.
///
/// With [`HiddenDistance::Mse`] and [`Reduction::ElementMean`] this is TextBrewer's
/// `hid_mse_loss`:
///
/// ```text
/// L = Σ_{b,s} m_bs · Σ_d (h_s W + b − h_t)²_bsd / (max(Σ m, 1) · D_t)
/// ```
///
/// The projection's parameters are part of this module: optimize it together with the student.
///
/// # Shapes
/// - `student_hidden`: `[..., D_s]`, `teacher_hidden`: `[..., D_t]` with the same leading dims
/// - `mask`: the leading dims (`[B, S]`)
///
/// # Panics
/// If `D_s` is not the projection's input size, or the projected student and the teacher differ
/// in shape.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex().autodiff();
/// let loss = HiddenLossConfig::new(HiddenProjectionConfig::new(4, 6)).init(&device);
/// let h_s = Tensor::<3>::ones([2, 3, 4], &device).require_grad();
/// let h_t = Tensor::<3>::ones([2, 3, 6], &device);
/// let l = loss.forward(h_s.clone(), h_t, Reduction::ElementMean);
/// let grads = l.backward();
/// assert!(loss.projection.weight().unwrap().grad(&grads).is_some());
/// assert!(h_s.grad(&grads).is_some());
/// ```
#[derive(Module, Debug)]
pub struct HiddenLoss {
    /// The student → teacher projection.
    pub projection: HiddenProjection,
    /// The per-token distance.
    #[module(skip)]
    pub distance: HiddenDistance,
}

impl HiddenLoss {
    /// Per-token values after projecting the student.
    ///
    /// # Panics
    /// See [`HiddenLoss`].
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
    ) -> RowLoss {
        let projected = self.projection.forward(student_hidden);
        self.distance.rows(projected, teacher_hidden)
    }

    /// Reduced loss `[1]`.
    ///
    /// # Panics
    /// See [`HiddenLoss`].
    pub fn forward<const D: usize>(
        &self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(student_hidden, teacher_hidden)
            .reduce(reduction)
    }

    /// Reduced loss `[1]` over the tokens kept by `mask`.
    ///
    /// # Panics
    /// See [`HiddenLoss`]; also if the mask does not match the leading dims.
    pub fn forward_masked<const D: usize>(
        &self,
        student_hidden: Tensor<D>,
        teacher_hidden: Tensor<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(student_hidden, teacher_hidden)
            .masked(mask)
            .reduce(reduction)
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-layer module
// ---------------------------------------------------------------------------------------------

/// One projection for all layer pairs, or one per pair.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum ProjectionSharing {
    /// A single projection shared by every pair (TinyBERT's `W_h`).
    Shared,
    /// An independent projection for each pair (DistillKit).
    PerPair,
}

/// Hidden-state loss over many layers: for each pair `(m, n)` of a [`LayerMap`], the distance
/// between the projected student state `m` and the teacher state `n`, reported as one
/// [`LossTerms`] entry per pair named `"hidden s{m}->t{n}"` with weight 1.
///
/// ```text
/// L = Σ_{(m, n) ∈ map} L_hidden(h_s[m] · W_(m,n) + b_(m,n), h_t[n])
/// ```
///
/// # Panics
/// If the lists' lengths differ from the map's layer counts; see also [`HiddenLoss`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// // TinyBERT: 4 student and 12 teacher layers, embeddings included (lists of 5 and 13).
/// let map = LayerMap::uniform_with_embeddings(4, 12).unwrap();
/// let proj = HiddenProjectionConfig::new(8, 16);
/// let loss = LayeredHiddenLoss::new(map, &proj, ProjectionSharing::Shared, HiddenDistance::Mse, &device)
///     .unwrap();
/// let s: Vec<_> = (0..5).map(|_| Tensor::<3>::ones([2, 3, 8], &device)).collect();
/// let t: Vec<_> = (0..13).map(|_| Tensor::<3>::ones([2, 3, 16], &device)).collect();
/// let terms = loss.forward(&s, &t, None, Reduction::ElementMean);
/// assert_eq!(terms.terms().len(), 5);
/// assert_eq!(terms.terms()[1].name, "hidden s1->t3");
/// ```
#[derive(Module, Debug)]
pub struct LayeredHiddenLoss {
    /// The projections: one when shared, one per pair otherwise.
    pub projections: Vec<HiddenProjection>,
    /// Which student state meets which teacher state.
    #[module(skip)]
    pub map: LayerMap,
    /// The per-token distance.
    #[module(skip)]
    pub distance: HiddenDistance,
}

impl LayeredHiddenLoss {
    /// Builds the projections for `map`.
    ///
    /// # Errors
    /// See [`HiddenProjectionConfig::try_init`].
    pub fn new(
        map: LayerMap,
        projection: &HiddenProjectionConfig,
        sharing: ProjectionSharing,
        distance: HiddenDistance,
        device: &Device,
    ) -> Result<Self, KdError> {
        let n = match sharing {
            ProjectionSharing::Shared => 1,
            ProjectionSharing::PerPair => map.pairs().len(),
        };
        let projections = (0..n)
            .map(|_| projection.try_init(device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LayeredHiddenLoss {
            projections,
            map,
            distance,
        })
    }

    /// The projection used by the `k`-th pair of the map.
    pub fn projection_for(&self, k: usize) -> &HiddenProjection {
        if self.projections.len() == 1 {
            &self.projections[0]
        } else {
            &self.projections[k]
        }
    }

    /// One reduced term per layer pair (see [`LayeredHiddenLoss`]); `mask` over the leading dims
    /// applies to every layer.
    ///
    /// # Panics
    /// See [`LayeredHiddenLoss`].
    pub fn forward<const D: usize>(
        &self,
        student_hiddens: &[Tensor<D>],
        teacher_hiddens: &[Tensor<D>],
        mask: Option<&RowMask>,
        reduction: Reduction,
    ) -> LossTerms {
        self.map.assert_lists(
            "student_hiddens",
            student_hiddens.len(),
            "teacher_hiddens",
            teacher_hiddens.len(),
        );
        let mut terms = LossTerms::new();
        for (k, &(m, n)) in self.map.pairs().iter().enumerate() {
            let projected = self.projection_for(k).forward(student_hiddens[m].clone());
            let value = self
                .distance
                .rows(projected, teacher_hiddens[n].clone())
                .masked_opt(mask)
                .reduce(reduction);
            terms = terms
                .with(format!("hidden s{m}->t{n}"), 1.0, value)
                .expect("weight 1 is finite");
        }
        terms
    }
}
