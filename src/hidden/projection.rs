//! The learnable projection `W` (student width → teacher width) of hidden-state distillation.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::error::{KdError, check_positive};

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
