//! Student and teacher vocabularies of different sizes.
//!
//! Model families often pad their embedding tables differently (Qwen2.5-0.5B has 151 936
//! entries, Qwen2.5-7B 152 064). The extra rows are padding that no tokenizer id reaches, but a
//! divergence over the last dimension needs both sides to have the same size.
//!
//! [`align_vocab`] returns a [`KdError::VocabMismatch`] naming both sizes unless an alignment is
//! asked for:
//! * [`VocabAlignment::Truncate`] keeps the first `min(V_s, V_t)` entries of both sides; the
//!   softmax then renormalises over the shared vocabulary.
//! * [`VocabAlignment::PadNegInf`] pads the smaller side with `-inf` logits (probability exactly
//!   0, never `0` logits, which would give the padding real mass — Liger pads with zeros and
//!   changes the loss). A padded entry has probability 0 on its side, so any divergence that
//!   divides by that side's probability where the other side has mass is `+inf`, as it should
//!   be: a forward KL when the *student* is padded and the teacher has mass there, a reverse KL
//!   or a skew/JSD term when the *teacher* is padded and the student has mass there. For a
//!   student and a teacher whose extra entries are unused padding rows (e.g. Qwen's 151 936 vs
//!   152 064), prefer `Truncate`: the teacher's mass on its padding rows is dropped instead of
//!   turning the loss infinite.

use burn::config::Config;
use burn::tensor::Tensor;

use crate::error::KdError;

/// How [`align_vocab`] treats different vocabulary sizes.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum VocabAlignment {
    /// Different sizes are an error ([`KdError::VocabMismatch`]). The default.
    Error,
    /// Keep the first `min(V_s, V_t)` entries of both sides.
    Truncate,
    /// Pad the smaller side with `-inf` up to `max(V_s, V_t)`.
    PadNegInf,
}

// `#[derive(Default)]` with `#[default]` does not combine with `#[derive(Config)]` on an enum.
#[allow(clippy::derivable_impls)]
impl Default for VocabAlignment {
    fn default() -> Self {
        VocabAlignment::Error
    }
}

/// Makes the last dimensions of student and teacher logits equal, as `alignment` says.
///
/// ```text
/// Truncate:  s[..., :V], t[..., :V]                 V = min(V_s, V_t)
/// PadNegInf: cat(x, -inf) on the smaller side      to max(V_s, V_t)
/// ```
///
/// # Shapes
/// - `student_logits`: `[..., V_s]`, `teacher_logits`: `[..., V_t]` with equal leading dims
/// - returns both with the same last dimension.
///
/// # Errors
/// [`KdError::VocabMismatch`] when `V_s ≠ V_t` and `alignment` is [`VocabAlignment::Error`].
///
/// # Panics
/// If the leading dimensions differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::vocab::{align_vocab, VocabAlignment};
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
/// let t = Tensor::<2>::from_floats([[1.0, 2.0, 3.0]], &device);
/// let err = align_vocab(s.clone(), t.clone(), VocabAlignment::Error).unwrap_err();
/// assert!(err.to_string().contains("student has 2 entries, teacher has 3"));
/// let (s, t) = align_vocab(s, t, VocabAlignment::PadNegInf).unwrap();
/// assert_eq!(s.dims(), t.dims());
/// assert_eq!(s.into_data().try_to_vec::<f32>().unwrap()[2], f32::NEG_INFINITY);
/// ```
pub fn align_vocab<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    alignment: VocabAlignment,
) -> Result<(Tensor<D>, Tensor<D>), KdError> {
    let sd = student_logits.dims();
    let td = teacher_logits.dims();
    assert!(
        sd[..D - 1] == td[..D - 1],
        "teacher_logits: shape {td:?} does not match student_logits shape {sd:?} in the leading dimensions"
    );
    let (vs, vt) = (sd[D - 1], td[D - 1]);
    if vs == vt {
        return Ok((student_logits, teacher_logits));
    }
    match alignment {
        VocabAlignment::Error => Err(KdError::VocabMismatch {
            student: vs,
            teacher: vt,
        }),
        VocabAlignment::Truncate => {
            let v = vs.min(vt);
            Ok((
                student_logits.narrow(D - 1, 0, v),
                teacher_logits.narrow(D - 1, 0, v),
            ))
        }
        VocabAlignment::PadNegInf => {
            let v = vs.max(vt);
            Ok((
                pad_neg_inf(student_logits, v),
                pad_neg_inf(teacher_logits, v),
            ))
        }
    }
}

/// Appends `-inf` entries along the last dim up to `v`.
fn pad_neg_inf<const D: usize>(x: Tensor<D>, v: usize) -> Tensor<D> {
    let mut dims = x.dims();
    let have = dims[D - 1];
    if have == v {
        return x;
    }
    dims[D - 1] = v - have;
    let pad = Tensor::<D>::full(dims, f32::NEG_INFINITY, &x.device());
    Tensor::cat(vec![x, pad], D - 1)
}
