//! Typed configuration errors.
//!
//! Every constructor that validates a number (`Temperature::new`, `try_init` on a config,
//! [`Normalizer::new`](crate::reduction::Normalizer::new), …) returns
//! `Result<_, KdError>`. Shape misuse inside a `forward` is a programming error and panics
//! instead (Burn's convention); each function documents its panics.

use core::fmt;

/// An invalid configuration value.
///
/// The enum is `#[non_exhaustive]`: later releases add variants for new losses without a
/// breaking change, so match with a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KdError {
    /// A temperature that is not finite or not strictly positive.
    InvalidTemperature {
        /// The rejected value.
        value: f64,
    },
    /// A parameter that must lie in a closed interval `[min, max]` (for example the
    /// mixing weight `alpha` in `[0, 1]`), or that is NaN.
    OutOfRange {
        /// Parameter name as it appears in the API (`"alpha"`, `"label_smoothing"`, …).
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// A parameter that must be finite and strictly positive (a normalizer, a class weight).
    NotPositive {
        /// Parameter name as it appears in the API.
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A parameter that must be finite (a loss-term weight).
    NotFinite {
        /// Parameter name as it appears in the API.
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A class label outside `[0, num_classes)` that is not the ignore index.
    LabelOutOfRange {
        /// The first offending label.
        label: i64,
        /// Number of classes `C` (the size of the logits' last dimension).
        num_classes: usize,
        /// The ignore index in force, if any.
        ignore_index: Option<i64>,
    },
    /// A list that must not be empty (the terms of a weighted sum, a class-weight vector).
    Empty {
        /// What was empty.
        name: &'static str,
    },
    /// A layer index outside the list of layers it refers to (a layer map's pair).
    LayerOutOfRange {
        /// `"student"` or `"teacher"`.
        side: &'static str,
        /// The offending index.
        index: usize,
        /// Number of layers on that side (valid indices are `0..len`).
        len: usize,
    },
    /// A layer mapping that cannot be built for the given layer counts.
    InvalidLayerMap {
        /// Number of student layers (list length) asked for.
        student_layers: usize,
        /// Number of teacher layers (list length) asked for.
        teacher_layers: usize,
        /// Why the mapping is impossible.
        reason: &'static str,
    },
    /// Student and teacher have different vocabulary sizes (last dimension) and no alignment
    /// was asked for (see [`VocabAlignment`](crate::vocab::VocabAlignment)).
    VocabMismatch {
        /// The student's vocabulary size.
        student: usize,
        /// The teacher's vocabulary size.
        teacher: usize,
    },
    /// A sparse teacher keeps more entries per row than the vocabulary has.
    TopkTooLarge {
        /// Entries per row (`k`).
        k: usize,
        /// Vocabulary size `V`.
        vocab: usize,
    },
    /// A sparse-teacher index outside `[0, V)`, or repeated within its row.
    InvalidTopkIndex {
        /// The first offending index.
        index: i64,
        /// Vocabulary size `V`.
        vocab: usize,
        /// `true` when the index is in range but appears twice in its row.
        duplicate: bool,
    },
    /// Two lists that must have the same length do not (teachers and their weights).
    LengthMismatch {
        /// What was compared.
        name: &'static str,
        /// The expected length.
        expected: usize,
        /// The length given.
        got: usize,
    },
}

impl fmt::Display for KdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KdError::InvalidTemperature { value } => {
                write!(f, "temperature must be finite and > 0, got {value}")
            }
            KdError::OutOfRange {
                name,
                value,
                min,
                max,
            } => write!(f, "{name} must be in [{min}, {max}], got {value}"),
            KdError::NotFinite { name, value } => write!(f, "{name} must be finite, got {value}"),
            KdError::NotPositive { name, value } => {
                write!(f, "{name} must be finite and > 0, got {value}")
            }
            KdError::LabelOutOfRange {
                label,
                num_classes,
                ignore_index,
            } => match ignore_index {
                Some(ii) => write!(
                    f,
                    "label {label} is out of range for {num_classes} classes \
                     (valid: 0..{num_classes}, or the ignore index {ii})"
                ),
                None => write!(
                    f,
                    "label {label} is out of range for {num_classes} classes (valid: 0..{num_classes})"
                ),
            },
            KdError::Empty { name } => write!(f, "{name} must not be empty"),
            KdError::VocabMismatch { student, teacher } => write!(
                f,
                "vocabulary mismatch: student has {student} entries, teacher has {teacher} \
                 (align them with VocabAlignment::Truncate or VocabAlignment::PadNegInf)"
            ),
            KdError::TopkTooLarge { k, vocab } => write!(
                f,
                "top-k teacher keeps k = {k} entries per row but the vocabulary has only {vocab}"
            ),
            KdError::InvalidTopkIndex {
                index,
                vocab,
                duplicate,
            } => {
                if *duplicate {
                    write!(f, "top-k index {index} appears twice in one row")
                } else {
                    write!(
                        f,
                        "top-k index {index} is out of range for a vocabulary of {vocab} (valid: 0..{vocab})"
                    )
                }
            }
            KdError::LengthMismatch {
                name,
                expected,
                got,
            } => write!(f, "{name}: expected {expected} entries, got {got}"),
            KdError::LayerOutOfRange { side, index, len } => write!(
                f,
                "{side} layer index {index} is out of range for {len} {side} layers (valid: 0..{len})"
            ),
            KdError::InvalidLayerMap {
                student_layers,
                teacher_layers,
                reason,
            } => write!(
                f,
                "invalid layer map from {student_layers} student to {teacher_layers} teacher layers: {reason}"
            ),
        }
    }
}

impl std::error::Error for KdError {}

/// Checks that `value` lies in `[min, max]` (NaN is rejected).
pub(crate) fn check_range(
    name: &'static str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<f64, KdError> {
    if value >= min && value <= max {
        Ok(value)
    } else {
        Err(KdError::OutOfRange {
            name,
            value,
            min,
            max,
        })
    }
}

/// Checks that `value` is finite and strictly positive.
pub(crate) fn check_positive(name: &'static str, value: f64) -> Result<f64, KdError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(KdError::NotPositive { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_parameter_and_value() {
        assert_eq!(
            KdError::InvalidTemperature { value: -1.0 }.to_string(),
            "temperature must be finite and > 0, got -1"
        );
        assert_eq!(
            check_range("alpha", 1.5, 0.0, 1.0).unwrap_err().to_string(),
            "alpha must be in [0, 1], got 1.5"
        );
        assert!(check_range("alpha", f64::NAN, 0.0, 1.0).is_err());
        assert_eq!(check_range("alpha", 1.0, 0.0, 1.0), Ok(1.0));
        assert_eq!(
            check_positive("normalizer", 0.0).unwrap_err().to_string(),
            "normalizer must be finite and > 0, got 0"
        );
        assert!(check_positive("normalizer", f64::INFINITY).is_err());
        assert_eq!(
            KdError::LabelOutOfRange {
                label: 7,
                num_classes: 5,
                ignore_index: Some(-100)
            }
            .to_string(),
            "label 7 is out of range for 5 classes (valid: 0..5, or the ignore index -100)"
        );
        assert_eq!(
            KdError::LayerOutOfRange {
                side: "teacher",
                index: 12,
                len: 12
            }
            .to_string(),
            "teacher layer index 12 is out of range for 12 teacher layers (valid: 0..12)"
        );
        assert_eq!(
            KdError::InvalidLayerMap {
                student_layers: 8,
                teacher_layers: 4,
                reason: "needs student_layers <= teacher_layers"
            }
            .to_string(),
            "invalid layer map from 8 student to 4 teacher layers: needs student_layers <= teacher_layers"
        );
    }

    #[test]
    fn divergence_family_messages() {
        assert_eq!(
            KdError::VocabMismatch {
                student: 151936,
                teacher: 152064
            }
            .to_string(),
            "vocabulary mismatch: student has 151936 entries, teacher has 152064 \
             (align them with VocabAlignment::Truncate or VocabAlignment::PadNegInf)"
        );
        assert_eq!(
            KdError::TopkTooLarge { k: 9, vocab: 7 }.to_string(),
            "top-k teacher keeps k = 9 entries per row but the vocabulary has only 7"
        );
        assert_eq!(
            KdError::InvalidTopkIndex {
                index: 7,
                vocab: 7,
                duplicate: false
            }
            .to_string(),
            "top-k index 7 is out of range for a vocabulary of 7 (valid: 0..7)"
        );
        assert_eq!(
            KdError::InvalidTopkIndex {
                index: 3,
                vocab: 7,
                duplicate: true
            }
            .to_string(),
            "top-k index 3 appears twice in one row"
        );
        assert_eq!(
            KdError::LengthMismatch {
                name: "weights",
                expected: 2,
                got: 3
            }
            .to_string(),
            "weights: expected 2 entries, got 3"
        );
    }
}
