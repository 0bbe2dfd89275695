//! LLM-style distillation through the LM head without materializing the logits
//! (`kd_losses::fused_linear`).
//!
//! A word-level causal transformer language model on a real Latin text, with an LM head as wide
//! as a small LLM's: the text's words, padded to a 32 000-entry vocabulary (as LLM heads carry
//! unused entries; they are never a target). A 2-layer, width-128 teacher is trained with
//! cross-entropy; a 2-layer, width-64 student is then distilled from it with
//! [`FusedLinearKdLoss`] (forward KL at `T = 2` + cross-entropy, `α = 0.5`) taking the last
//! hidden states and the two LM heads: the `[tokens, 32 000]` logits of student and teacher
//! never exist, one row chunk of them at a time does.
//!
//! A second student (same initialisation and batches) is distilled from the teacher's **top-64
//! log-probabilities** per token (at `T = 1`, the temperature they were stored at), the form
//! Axolotl and DistillKit store offline
//! ([`LinearTeacher::Topk`], the missing mass in a tail bin), again through its head.
//!
//! Last, one training step of the distilled student on a 4 096-token batch runs both ways, the
//! fused linear loss and the materialized path (logits of both models, then
//! [`distillation_loss`]), with plain and with **soft-capped** logits (Gemma-2's
//! `30 · tanh(z / 30)`, [`LogitTransform`]), and prints the loss of each, the largest difference
//! of their head gradients, the median step time and the step's peak memory over the memory
//! before it.
//!
//! ```text
//! cargo run --release -p kd-examples --bin lm_head            # full run (minutes on 2 cores)
//! cargo run -p kd-examples --bin lm_head -- --quick           # CI smoke run
//! ```
//!
//! Data: Cicero, *De finibus bonorum et malorum*, book 1 (45 BC, public domain), as shipped in
//! the `lipsum` crate (`lipsum::LIBER_PRIMUS`, crate licence MIT).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use kd_losses::LogitTransform;
use kd_losses::distillation_loss;
use kd_losses::fused_linear::{
    FusedLinearKdLoss, FusedLinearKdLossConfig, LinearHead, LinearTeacher,
};
use kd_losses::prelude::*;
use kd_losses::sparse::MissingMass;
use rand::SeedableRng;
use rand::rngs::StdRng;

#[path = "lm.rs"]
mod lm;
use lm::{Arch, Batch, Lm, perplexity, sample_batch, validation_batches};

/// The text's words (lower-cased, punctuation stripped); id 0 is padding.
struct Words {
    words: Vec<String>,
    train: Vec<usize>,
    valid: Vec<usize>,
}

impl Words {
    fn load() -> Self {
        let tokens: Vec<String> = lipsum::LIBER_PRIMUS
            .to_lowercase()
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
            .filter(|w| !w.is_empty())
            .collect();
        let mut words = tokens.clone();
        words.sort_unstable();
        words.dedup();
        let ids: Vec<usize> = tokens
            .iter()
            .map(|w| 1 + words.binary_search(w).unwrap())
            .collect();
        let cut = ids.len() * 9 / 10;
        Words {
            words,
            train: ids[..cut].to_vec(),
            valid: ids[cut..].to_vec(),
        }
    }
}

/// `[B, S, D]` → `[B·S, D]`.
fn rows(x: Tensor<3>) -> Tensor<2> {
    let [b, s, d] = x.dims();
    x.reshape([b * s, d])
}

fn flat_labels(batch: &Batch) -> Tensor<1, Int> {
    let [b, s] = batch.labels.dims();
    batch.labels.clone().reshape([b * s])
}

/// What the student is distilled from.
#[derive(Clone, Copy)]
enum TeacherForm {
    /// The teacher's last hidden states and LM head (its logits formed chunk by chunk).
    Head,
    /// The teacher's top-`k` log-probabilities per token, as a team stores them offline.
    Topk(usize),
}

/// The teacher's top-`k` token ids and log-probabilities per position of `batch`. Here they are
/// computed on the fly from the teacher's logits; Axolotl and DistillKit compute them once,
/// store them with the dataset (`k` ids + `k` values per token instead of a 32 000-wide row)
/// and read them back, so the teacher does not run during the student's training.
fn stored_topk(teacher: &Lm, batch: &Batch, k: usize) -> TopkTeacher<2> {
    let logits = rows(teacher.forward(batch).logits);
    let log_probs = burn::tensor::activation::log_softmax(logits, 1);
    let (values, ids) = log_probs.topk_with_indices(k, 1);
    TopkTeacher::from_log_probs(ids, values)
}

/// The distillation loss of `student` against `teacher` on `batch`, without logits.
fn fused_loss(
    student: &Lm,
    teacher: &Lm,
    batch: &Batch,
    loss: &FusedLinearKdLoss,
    form: TeacherForm,
) -> LossTerms {
    let teacher_side = match form {
        TeacherForm::Head => LinearTeacher::Head {
            hidden: rows(teacher.last_hidden(batch)),
            head: LinearHead::from_linear(&teacher.head),
        },
        TeacherForm::Topk(k) => LinearTeacher::Topk(stored_topk(teacher, batch, k)),
    };
    let out = loss.forward(
        rows(student.last_hidden(batch)),
        &LinearHead::from_linear(&student.head),
        teacher_side,
        flat_labels(batch),
    );
    // `total` carries the gradient; soft and hard are for the log.
    LossTerms::new()
        .with("total", 1.0, out.total)
        .and_then(|t| t.with("soft (log)", 0.0, out.soft))
        .and_then(|t| t.with("hard (log)", 0.0, out.hard))
        .expect("finite weights")
}

/// The same loss through the materialized logits of both models.
fn materialized_loss(
    student: &Lm,
    teacher: &Lm,
    batch: &Batch,
    kd: &DistillationLoss,
) -> Tensor<1> {
    let s = student.forward(batch).logits;
    let t = teacher.forward(batch).logits;
    let [b, sq, v] = s.dims();
    distillation_loss(
        s.reshape([b * sq, v]),
        t.reshape([b * sq, v]),
        flat_labels(batch),
        kd,
        Reduction::RowMean,
    )
    .total
}

fn train_teacher(
    mut model: Lm,
    ids: &[usize],
    steps: usize,
    batch: usize,
    seq: usize,
    device: &Device,
) -> Lm {
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(11);
    let start = Instant::now();
    for step in 0..steps {
        let b = sample_batch(ids, batch, seq, &mut rng, device);
        let logits = model.forward(&b).logits;
        let loss = cross_entropy(logits, b.labels.clone(), &CrossEntropyOptions::default())
            .reduce(Reduction::RowMean);
        if step % 50 == 0 || step + 1 == steps {
            println!(
                "  step {step:>4} ({:.1}s): ce {:.4}",
                start.elapsed().as_secs_f64(),
                loss.clone().into_scalar::<f64>()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(2e-3, model, grads);
    }
    model
}

fn train_student(
    mut model: Lm,
    teacher: &Lm,
    ids: &[usize],
    steps: usize,
    batch: usize,
    seq: usize,
    loss: &FusedLinearKdLoss,
    form: TeacherForm,
    device: &Device,
) -> Lm {
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(7);
    let start = Instant::now();
    for step in 0..steps {
        let b = sample_batch(ids, batch, seq, &mut rng, device);
        let terms = fused_loss(&model, teacher, &b, loss, form);
        if step % 50 == 0 || step + 1 == steps {
            let parts: Vec<String> = terms
                .scalars()
                .iter()
                .map(|(n, v)| format!("{n} {v:.4}"))
                .collect();
            println!(
                "  step {step:>4} ({:.1}s): {}",
                start.elapsed().as_secs_f64(),
                parts.join(", ")
            );
        }
        let total = terms.get("total").expect("total term");
        let grads = GradientsParams::from_grads(total.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    model
}

fn status_kib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `f` with the process's peak resident set reset; returns its result and the peak increase
/// over the resident set before it, in MB (`None` off Linux).
fn with_peak<T>(f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS:");
    let out = f();
    let peak = status_kib("VmHWM:");
    let extra = match (reset, before, peak) {
        (true, Some(b), Some(p)) => Some((p - b).max(0.0) * 1024.0 / 1e6),
        _ => None,
    };
    (out, extra)
}

/// One training step's forward + backward either way; returns the loss and the head's weight
/// gradient.
fn step(
    fused: bool,
    student: &Lm,
    teacher: &Lm,
    batch: &Batch,
    loss: &FusedLinearKdLoss,
    kd: &DistillationLoss,
) -> (f64, Vec<f32>) {
    let total = if fused {
        fused_loss(student, teacher, batch, loss, TeacherForm::Head)
            .get("total")
            .expect("total term")
    } else {
        materialized_loss(student, teacher, batch, kd)
    };
    let value = total.clone().into_scalar::<f64>();
    let grads = total.backward();
    let g = student
        .head
        .weight
        .grad(&grads)
        .expect("head gradient")
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 gradient");
    (value, g)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let device = Device::flex().autodiff();
    let words = Words::load();
    let vocab = if quick { 2000 } else { 32000 }.max(words.words.len() + 1);
    println!(
        "Cicero, De finibus I (lipsum::LIBER_PRIMUS): {} train / {} validation words, {} distinct, \
         LM heads of {vocab} entries",
        words.train.len(),
        words.valid.len(),
        words.words.len()
    );
    let seq = if quick { 16 } else { 64 };
    let batch = if quick { 4 } else { 16 };
    let steps = if quick { 2 } else { 150 };
    let teacher_arch = Arch {
        layers: 2,
        d: 128,
        heads: 4,
    };
    let student_arch = Arch {
        layers: 2,
        d: 64,
        heads: 4,
    };
    let valid = validation_batches(&words.valid, 32, seq, &device);

    device.seed(1000);
    println!(
        "teacher: {} layers, d = {}",
        teacher_arch.layers, teacher_arch.d
    );
    let teacher = train_teacher(
        Lm::new(teacher_arch, vocab, seq, &device),
        &words.train,
        steps,
        batch,
        seq,
        &device,
    );
    let teacher_ppl = perplexity(&teacher, &valid);
    println!("teacher: validation perplexity {teacher_ppl:.2}");
    let teacher = teacher.no_grad();

    device.seed(7);
    // (No perplexity of the initial student: `no_grad` on a clone of a Burn module also stops
    // the original's parameters from requiring a gradient.)
    let init = Lm::new(student_arch, vocab, seq, &device);
    let init_topk = init.clone();
    let loss = FusedLinearKdLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.5)
        .init();
    println!(
        "student: {} layers, d = {}, distilled through the LM heads (forward KL, T = 2, alpha = 0.5)",
        student_arch.layers, student_arch.d
    );
    let student = train_student(
        init,
        &teacher,
        &words.train,
        steps,
        batch,
        seq,
        &loss,
        TeacherForm::Head,
        &device,
    );
    let student_ppl = perplexity(&student, &valid);
    println!("student: validation perplexity {student_ppl:.2} distilled");

    // The same student distilled from the teacher's top-64 log-probabilities per token (the
    // offline form), the missing mass in one tail bin. At `T = 1`, the temperature the
    // log-probabilities were stored at: there the tail bin is exact, while at `T ≠ 1` tempering
    // one bin stands for tempering the 31 936 entries it sums (at `T = 2` that understates the
    // tail's tempered mass, and the student learned to starve every token outside the
    // teacher's top 64: validation perplexity 70 324 against 4 750, 2026-12-03).
    let k = 64;
    let loss_topk = FusedLinearKdLossConfig::new()
        .with_temperature(1.0)
        .with_alpha(0.5)
        .with_missing_mass(MissingMass::TailBucket)
        .init();
    println!(
        "student from the teacher's top-{k} log-probabilities (tail bucket, T = 1), same seed:"
    );
    let student_topk = train_student(
        init_topk,
        &teacher,
        &words.train,
        steps,
        batch,
        seq,
        &loss_topk,
        TeacherForm::Topk(k),
        &device,
    );
    let topk_ppl = perplexity(&student_topk, &valid);
    println!("student: validation perplexity {topk_ppl:.2} distilled from the top-{k} teacher");

    // Side by side: one step on a large batch, both ways.
    let big = if quick { 8 } else { 64 };
    let mut rng = StdRng::seed_from_u64(99);
    let b = sample_batch(&words.train, big, seq, &mut rng, &device);
    let tokens = big * seq;
    let kd = DistillationLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.5)
        .init();
    let reps = if quick { 1 } else { 3 };
    println!();
    println!(
        "one step (forward + backward) on {tokens} token positions, vocabulary {vocab}: logits \
         tensor {:.0} MB each (student, teacher)",
        (tokens * vocab * 4) as f64 / 1e6
    );
    println!("| path | loss | median step | peak extra memory |");
    println!("|---|---|---|---|");
    // Plain heads, then Gemma-2-style soft-capped ones (`c · tanh(z / c)`, c = 30, on both
    // models' logits): the cap is a configuration option of both losses, its derivative part of
    // the gradient.
    let cap = LogitTransform::softcap(30.0).expect("a positive cap");
    let capped_loss = FusedLinearKdLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.5)
        .with_student_logits(cap)
        .with_teacher_logits(cap)
        .init();
    let capped_kd = DistillationLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.5)
        .with_student_logits(cap)
        .with_teacher_logits(cap)
        .init();
    for (heads_name, loss, kd) in [
        ("", &loss, &kd),
        (", soft-capped c = 30", &capped_loss, &capped_kd),
    ] {
        let mut heads = Vec::new();
        for (name, fused) in [
            ("fused linear (no logits)", true),
            ("materialized logits", false),
        ] {
            let _ = step(fused, &student, &teacher, &b, loss, kd);
            let ((value, g), peak) = with_peak(|| step(fused, &student, &teacher, &b, loss, kd));
            let mut times = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                let _ = step(fused, &student, &teacher, &b, loss, kd);
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let peak = peak.map_or("n/a".into(), |m| format!("{m:.0} MB"));
            println!(
                "| {name}{heads_name} | {value:.6} | {:.0} ms | {peak} |",
                times[times.len() / 2]
            );
            heads.push((value, g));
        }
        let (a, b) = (&heads[0], &heads[1]);
        let scale = b.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff =
            a.1.iter()
                .zip(&b.1)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!(
            "|   difference{heads_name} | {:.2e} (relative) | head gradient {:.2e} of its largest entry | |",
            (a.0 - b.0).abs() / b.0.abs(),
            diff / scale.max(f32::MIN_POSITIVE)
        );
    }
    if quick {
        println!("(--quick is a smoke test: tiny model, vocabulary and batch.)");
    }
    println!(
        "teacher_ppl={teacher_ppl:.4} student_ppl={student_ppl:.4} topk_student_ppl={topk_ppl:.4}"
    );
}
