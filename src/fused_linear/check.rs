//! The checks of [`fused_linear_distillation`](super::fused_linear_distillation)'s inputs:
//! every shape against the student's hidden states and head (named, with both shapes), the
//! vocabularies, the labels' range.

use burn::tensor::{Bool, Int, Tensor};

use super::{FusedLinearKdLossConfig, LinearHead, LinearTeacher};
use crate::error::KdError;
use crate::vocab::VocabAlignment;

/// Panics on the first input that does not match; returns the student's vocabulary `V`.
pub(super) fn check_inputs(
    student_hidden: &Tensor<2>,
    student_head: &LinearHead,
    teacher: &LinearTeacher,
    labels: &Tensor<1, Int>,
    mask: Option<&Tensor<1, Bool>>,
    cfg: &FusedLinearKdLossConfig,
) -> usize {
    let [n, h] = student_hidden.dims();
    let [hw, v] = student_head.dims();
    assert!(
        hw == h,
        "student_head.weight: shape {:?} does not match student_hidden shape {:?} (expected [{h}, V])",
        student_head.weight.dims(),
        student_hidden.dims()
    );
    if let Some(b) = &student_head.bias {
        assert!(
            b.dims() == [v],
            "student_head.bias: shape {:?} does not match student_head.weight shape {:?} (expected [{v}])",
            b.dims(),
            student_head.weight.dims()
        );
    }
    assert!(
        labels.dims() == [n],
        "labels: shape {:?} does not match student_hidden shape {:?} (expected [{n}])",
        labels.dims(),
        student_hidden.dims()
    );
    if let Some(m) = mask {
        assert!(
            m.dims() == [n],
            "mask: shape {:?} does not match student_hidden shape {:?} (expected [{n}])",
            m.dims(),
            student_hidden.dims()
        );
    }
    let v_t = match teacher {
        LinearTeacher::Head { hidden, head } => {
            let [nt, ht] = hidden.dims();
            assert!(
                nt == n,
                "teacher hidden: shape {:?} does not match student_hidden shape {:?} in the rows",
                hidden.dims(),
                student_hidden.dims()
            );
            let [hwt, vt] = head.dims();
            assert!(
                hwt == ht,
                "teacher head.weight: shape {:?} does not match teacher hidden shape {:?} (expected [{ht}, V])",
                head.weight.dims(),
                hidden.dims()
            );
            if let Some(b) = &head.bias {
                assert!(
                    b.dims() == [vt],
                    "teacher head.bias: shape {:?} does not match teacher head.weight shape {:?}",
                    b.dims(),
                    head.weight.dims()
                );
            }
            vt
        }
        LinearTeacher::Logits(t) => {
            assert!(
                t.dims()[0] == n,
                "teacher logits: shape {:?} does not match student_hidden shape {:?} in the rows",
                t.dims(),
                student_hidden.dims()
            );
            t.dims()[1]
        }
        LinearTeacher::Topk(t) => {
            let [nt, _] = t.indices().dims();
            assert!(
                nt == n,
                "teacher top-k indices: shape {:?} does not match student_hidden shape {:?} in the rows",
                t.indices().dims(),
                student_hidden.dims()
            );
            // Checked against the student's vocabulary, chunk by chunk.
            v
        }
    };
    if let Some(ad) = &student_head.adapter {
        let [ha, r] = ad.a.dims();
        assert!(
            ha == h,
            "student_head.adapter.a: shape {:?} does not match student_hidden shape {:?} (expected [{h}, r])",
            ad.a.dims(),
            student_hidden.dims()
        );
        assert!(
            ad.b.dims() == [r, v],
            "student_head.adapter.b: shape {:?} does not match student_head.adapter.a shape {:?} and weight shape {:?} (expected [{r}, {v}])",
            ad.b.dims(),
            ad.a.dims(),
            student_head.weight.dims()
        );
        assert!(
            ad.scale.is_finite(),
            "student_head.adapter.scale: {} is not finite",
            ad.scale
        );
    }
    if v_t != v && cfg.vocab == VocabAlignment::Error {
        panic!(
            "{}",
            KdError::VocabMismatch {
                student: v,
                teacher: v_t
            }
        );
    }
    if let Err(e) = crate::logits::hard::check_labels(labels, v, Some(cfg.ignore_index)) {
        panic!("labels: {e}");
    }
    v
}
