//! Which student layer learns from which teacher layer.
//!
//! A [`LayerMap`] is a list of `(student index, teacher index)` pairs into two lists of
//! per-layer tensors, with the lengths of those lists. The multi-layer losses
//! ([`LayeredHiddenLoss`](crate::hidden::LayeredHiddenLoss),
//! [`attention_layers_mse`](crate::attention::attention_layers_mse)) take the lists and the map.
//!
//! Two list conventions are in use, and the constructors say which one they build for:
//! * **hidden states**, as Hugging Face's `output_hidden_states`: `M + 1` tensors for a model of
//!   `M` transformer layers, index 0 being the embeddings output and index `l` layer `l`;
//! * **attention maps**, as `output_attentions`: `M` tensors, index `l − 1` being layer `l`.
//!
//! | constructor | pairs (list indices) | for |
//! |---|---|---|
//! | [`uniform_with_embeddings(M, N)`](LayerMap::uniform_with_embeddings) | `(m, g(m))`, `m = 0..=M` | hidden states (TinyBERT) |
//! | [`uniform(M, N)`](LayerMap::uniform) | `(m − 1, g(m) − 1)`, `m = 1..=M` | attention maps (TinyBERT) |
//! | [`skip(M, N, step)`](LayerMap::skip) | `(i, (i + 1)·step − 1)`, `i = 0..M` | PKD-Skip |
//! | [`last_k(M, N, k)`](LayerMap::last_k) | `(M − k + j, N − k + j)`, `j = 0..k` | PKD-Last |
//! | [`from_pairs(M, N, ..)`](LayerMap::from_pairs) | as given | anything else |
//!
//! with TinyBERT's `g(m) = ⌊m · N / M⌋` (exact when `M` divides `N`). For a 4-layer student and
//! a 12-layer teacher, the hidden states pair `0↔0, 1↔3, 2↔6, 3↔9, 4↔12` (embeddings with
//! embeddings, layer `m` with layer `3m`), and the attention maps of student layer `m` meet those
//! of teacher layer `3m`, at list indices `(0, 2), (1, 5), (2, 8), (3, 11)`.
//!
//! ```
//! use kd_losses::layer_map::LayerMap;
//!
//! assert_eq!(LayerMap::uniform(4, 12).unwrap().pairs(), &[(0, 2), (1, 5), (2, 8), (3, 11)]);
//! assert_eq!(LayerMap::uniform_with_embeddings(2, 4).unwrap().pairs(), &[(0, 0), (1, 2), (2, 4)]);
//! assert!(LayerMap::from_pairs(6, 12, vec![(5, 12)]).is_err()); // teacher index 12 of 0..12
//! ```

use crate::error::KdError;

/// A validated list of `(student, teacher)` layer-index pairs; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerMap {
    student_layers: usize,
    teacher_layers: usize,
    pairs: Vec<(usize, usize)>,
}

fn invalid(m: usize, n: usize, reason: &'static str) -> KdError {
    KdError::InvalidLayerMap {
        student_layers: m,
        teacher_layers: n,
        reason,
    }
}

fn tinybert_g(m: usize, student: usize, teacher: usize) -> usize {
    m * teacher / student
}

impl LayerMap {
    /// Explicit pairs into a student list of `student_layers` tensors and a teacher list of
    /// `teacher_layers`. Pairs may repeat a layer on either side.
    ///
    /// # Errors
    /// [`KdError::Empty`] for no pairs; [`KdError::LayerOutOfRange`] for an index past its list.
    pub fn from_pairs(
        student_layers: usize,
        teacher_layers: usize,
        pairs: Vec<(usize, usize)>,
    ) -> Result<Self, KdError> {
        if pairs.is_empty() {
            return Err(KdError::Empty {
                name: "layer pairs",
            });
        }
        for &(s, t) in &pairs {
            if s >= student_layers {
                return Err(KdError::LayerOutOfRange {
                    side: "student",
                    index: s,
                    len: student_layers,
                });
            }
            if t >= teacher_layers {
                return Err(KdError::LayerOutOfRange {
                    side: "teacher",
                    index: t,
                    len: teacher_layers,
                });
            }
        }
        Ok(LayerMap {
            student_layers,
            teacher_layers,
            pairs,
        })
    }

    fn check_uniform(m: usize, n: usize) -> Result<(), KdError> {
        if m == 0 || n == 0 {
            return Err(invalid(m, n, "both models need at least one layer"));
        }
        if m > n {
            return Err(invalid(
                m,
                n,
                "uniform mapping needs student_layers <= teacher_layers",
            ));
        }
        Ok(())
    }

    /// TinyBERT's uniform map for **attention** lists (`M` and `N` tensors, index `l − 1` =
    /// layer `l`): student layer `m` meets teacher layer `g(m) = ⌊m·N/M⌋`, `m = 1..=M`.
    ///
    /// # Errors
    /// [`KdError::InvalidLayerMap`] when `M = 0`, `N = 0` or `M > N`.
    pub fn uniform(student_layers: usize, teacher_layers: usize) -> Result<Self, KdError> {
        let (m, n) = (student_layers, teacher_layers);
        Self::check_uniform(m, n)?;
        let pairs = (1..=m).map(|i| (i - 1, tinybert_g(i, m, n) - 1)).collect();
        Ok(LayerMap {
            student_layers: m,
            teacher_layers: n,
            pairs,
        })
    }

    /// TinyBERT's uniform map for **hidden-state** lists (`M + 1` and `N + 1` tensors, index 0 =
    /// embeddings): `(m, g(m))` for `m = 0..=M`, so embeddings meet embeddings and the last
    /// layer meets the last layer. `student_layers` and `teacher_layers` count transformer layers
    /// (`M`, `N`); the map's list lengths are `M + 1` and `N + 1`.
    ///
    /// # Errors
    /// [`KdError::InvalidLayerMap`] when `M = 0`, `N = 0` or `M > N`.
    pub fn uniform_with_embeddings(
        student_layers: usize,
        teacher_layers: usize,
    ) -> Result<Self, KdError> {
        let (m, n) = (student_layers, teacher_layers);
        Self::check_uniform(m, n)?;
        let pairs = (0..=m).map(|i| (i, tinybert_g(i, m, n))).collect();
        Ok(LayerMap {
            student_layers: m + 1,
            teacher_layers: n + 1,
            pairs,
        })
    }

    /// PKD-Skip: student list index `i` meets teacher index `(i + 1)·step − 1`, `i = 0..M` (every
    /// `step`-th teacher layer). `uniform(M, N)` equals `skip(M, N, N / M)` when `M` divides `N`.
    ///
    /// # Errors
    /// [`KdError::InvalidLayerMap`] when `step = 0`, `M = 0`, or `M · step > N`.
    pub fn skip(
        student_layers: usize,
        teacher_layers: usize,
        step: usize,
    ) -> Result<Self, KdError> {
        let (m, n) = (student_layers, teacher_layers);
        if step == 0 || m == 0 {
            return Err(invalid(
                m,
                n,
                "skip needs step >= 1 and at least one student layer",
            ));
        }
        if m.checked_mul(step).is_none_or(|x| x > n) {
            return Err(invalid(
                m,
                n,
                "skip needs student_layers * step <= teacher_layers",
            ));
        }
        let pairs = (0..m).map(|i| (i, (i + 1) * step - 1)).collect();
        Ok(LayerMap {
            student_layers: m,
            teacher_layers: n,
            pairs,
        })
    }

    /// PKD-Last: the last `k` student entries meet the last `k` teacher entries in order,
    /// `(M − k + j, N − k + j)` for `j = 0..k`.
    ///
    /// # Errors
    /// [`KdError::InvalidLayerMap`] when `k = 0` or `k > min(M, N)`.
    pub fn last_k(student_layers: usize, teacher_layers: usize, k: usize) -> Result<Self, KdError> {
        let (m, n) = (student_layers, teacher_layers);
        if k == 0 || k > m || k > n {
            return Err(invalid(
                m,
                n,
                "last_k needs 1 <= k <= min(student_layers, teacher_layers)",
            ));
        }
        let pairs = (0..k).map(|j| (m - k + j, n - k + j)).collect();
        Ok(LayerMap {
            student_layers: m,
            teacher_layers: n,
            pairs,
        })
    }

    /// The `(student index, teacher index)` pairs, in order.
    pub fn pairs(&self) -> &[(usize, usize)] {
        &self.pairs
    }

    /// Length of the student list this map indexes.
    pub fn student_layers(&self) -> usize {
        self.student_layers
    }

    /// Length of the teacher list this map indexes.
    pub fn teacher_layers(&self) -> usize {
        self.teacher_layers
    }

    /// Panics unless the two lists have the lengths this map was built for.
    pub(crate) fn assert_lists(&self, s_name: &str, s_len: usize, t_name: &str, t_len: usize) {
        assert!(
            s_len == self.student_layers,
            "{s_name}: {s_len} tensors, but the layer map expects {} student layers",
            self.student_layers
        );
        assert!(
            t_len == self.teacher_layers,
            "{t_name}: {t_len} tensors, but the layer map expects {} teacher layers",
            self.teacher_layers
        );
    }
}
