//! Burn `Config` + `Module` forms of the hidden-state losses: one pair of layers
//! ([`HiddenLoss`]) or several through a [`LayerMap`] ([`LayeredHiddenLoss`]).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{
    HiddenProjection, HiddenProjectionConfig, hidden_cosine, hidden_mse, hidden_normalized_mse,
};
use crate::combine::LossTerms;
use crate::error::KdError;
use crate::layer_map::LayerMap;
use crate::reduction::{Reduction, RowLoss, RowMask};

/// Which per-token distance a [`HiddenLoss`] uses.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum HiddenDistance {
    /// [`hidden_mse`] (TinyBERT, TextBrewer); pair it with [`Reduction::ElementMean`].
    Mse,
    /// [`hidden_cosine`] (DistilBERT); pair it with [`Reduction::RowMean`].
    Cosine,
    /// [`hidden_normalized_mse`] (PKD); pair it with [`Reduction::RowMean`] or `Sum`.
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
/// use kd_losses::HiddenLossConfig;
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
/// use kd_losses::{HiddenDistance, ProjectionSharing};
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
