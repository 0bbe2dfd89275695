//! Sequence distillation of a small character-level transformer (TinyBERT-style).
//!
//! A 4-layer teacher (width 64) is trained as a character-level language model on a real Latin
//! text. The same 2-layer, width-32 student is then trained twice from the same initialization:
//!
//! * **alone**: next-character cross-entropy;
//! * **distilled**: cross-entropy plus
//!   - token-logit KD (`T²·KL(teacher ‖ student)` at `T = 2`) under the `[B, S]` padding mask,
//!   - hidden-state MSE between mapped layers (`LayerMap::uniform_with_embeddings(2, 4)`:
//!     embeddings↔embeddings, student layer 1↔teacher layer 2, 2↔4) through a learnable
//!     projection `32 → 64` that trains with the student,
//!   - attention-score MSE between mapped layers (`LayerMap::uniform(2, 4)`), head by head.
//!
//! Training batches are windows of random length, right-padded to a common length; the mask
//! removes padded positions from every loss (labels `-100` for the cross-entropy). The models
//! write their own causal multi-head self-attention so that they can return per-layer hidden
//! states `[B, S, D]` and pre-softmax attention scores `[B, H, S, S]` (future and padded keys
//! are `-inf`; the attention loss sets those pairs to 0 in both maps).
//!
//! The table reports validation perplexity (per character) on the last 10% of the text, which
//! no model trains on; the last line is machine-readable.
//!
//! One full run on 2 CPU cores (about 3.5 minutes): teacher 7.26, student alone 8.92, distilled
//! student 8.17 (validation perplexity per character).
//!
//! ```text
//! cargo run --release -p kd-examples --bin sequence            # full run (a few minutes on 2 cores)
//! cargo run -p kd-examples --bin sequence -- --quick           # CI smoke run (a few steps)
//! ```
//!
//! Data: Cicero, *De finibus bonorum et malorum*, book 1 (45 BC, public domain), as shipped in
//! the `lipsum` crate (`lipsum::LIBER_PRIMUS`, crate licence MIT). Nothing is downloaded at run
//! time.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use kd_losses::prelude::*;
use kd_losses::{HiddenDistance, ProjectionSharing};
use rand::SeedableRng;
use rand::rngs::StdRng;

#[path = "lm.rs"]
mod lm;
use lm::{
    Corpus, Lm, STUDENT_ARCH, TEACHER_ARCH, Train, ce_loss, describe, lr_at, perplexity,
    sample_batch, train_alone, validation_batches,
};

/// The distilled student together with its hidden-state projections: one module, so the
/// optimizer updates the projection with the student.
#[derive(Module, Debug)]
struct KdStudent {
    lm: Lm,
    hidden: LayeredHiddenLoss,
}

// -------------------------------------------------------------------------------- training

/// Loss weights of the distilled student.
struct KdWeights {
    temperature: f64,
    ce: f64,
    logits: f64,
    hidden: f64,
    attention: f64,
}

/// Trains the student with CE + logit KD + hidden MSE + attention MSE against `teacher`.
fn train_distilled(
    mut model: KdStudent,
    teacher: &Lm,
    ids: &[usize],
    cfg: &Train,
    w: &KdWeights,
    seed: u64,
    device: &Device,
) -> KdStudent {
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let temperature = Temperature::new(w.temperature).unwrap();
    let (s_layers, t_layers) = (model.lm.blocks.len(), teacher.blocks.len());
    let attention_map = LayerMap::uniform(s_layers, t_layers).unwrap();
    // A frozen copy: its forward passes record no autodiff graph.
    let teacher = teacher.clone().no_grad();
    for step in 0..cfg.steps {
        let batch = sample_batch(ids, cfg.batch, cfg.seq, &mut rng, device);
        let rows = RowMask::new(batch.mask.clone());
        let s = model.lm.forward(&batch);
        let t = teacher.forward(&batch);
        let kd = soft_kl(
            s.logits.clone(),
            t.logits.clone(),
            temperature,
            T2Scaling::On,
        )
        .masked(&rows)
        .reduce(Reduction::RowMean);
        let hidden =
            model
                .hidden
                .forward(&s.hiddens, &t.hiddens, Some(&rows), Reduction::ElementMean);
        let attention = attention_layers_mse(
            &s.scores,
            &t.scores,
            &attention_map,
            Some(batch.mask.clone()),
            HeadReduce::Match,
            AttentionSpace::Scores,
            Reduction::RowMean,
        );
        let terms = LossTerms::new()
            .with("ce", w.ce, ce_loss(&s, &batch))
            .and_then(|l| l.with("logit kd", w.logits, kd))
            .unwrap()
            .extend(hidden, w.hidden)
            .extend(attention, w.attention);
        if step % 100 == 0 || step + 1 == cfg.steps {
            println!(
                "  step {step:>4} ({:.1}s): {}",
                start.elapsed().as_secs_f64(),
                describe(&terms)
            );
        }
        let grads = GradientsParams::from_grads(terms.total().backward(), &model);
        model = optim.step(lr_at(cfg, step), model, grads);
    }
    model
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let device = Device::flex().autodiff();
    let corpus = Corpus::load();
    let vocab = corpus.vocab();
    println!(
        "Cicero, De finibus I (lipsum::LIBER_PRIMUS): {} train / {} validation characters, \
         vocabulary {} (+ padding)",
        corpus.train.len(),
        corpus.valid.len(),
        vocab - 1
    );

    let seq = if quick { 32 } else { 64 };
    let (teacher_arch, student_arch) = (TEACHER_ARCH, STUDENT_ARCH);
    let teacher_cfg = Train {
        steps: if quick { 6 } else { 800 },
        batch: if quick { 8 } else { 16 },
        seq,
        lr: 2e-3,
    };
    let student_cfg = Train {
        steps: if quick { 6 } else { 800 },
        batch: if quick { 8 } else { 16 },
        seq,
        lr: 3e-3,
    };
    let weights = KdWeights {
        temperature: 2.0,
        ce: 0.5,
        logits: 0.5,
        hidden: 0.5,
        attention: 0.1,
    };
    let valid = validation_batches(&corpus.valid, 64, seq, &device);

    device.seed(1000);
    let start = Instant::now();
    println!(
        "teacher: {} layers, d = {}, {} heads",
        teacher_arch.layers, teacher_arch.d, teacher_arch.heads
    );
    let teacher = Lm::new(teacher_arch, vocab, seq, &device);
    let teacher = train_alone(teacher, &corpus.train, &teacher_cfg, 1000, &device);
    let teacher_ppl = perplexity(&teacher, &valid);
    let teacher_time = start.elapsed().as_secs_f64();
    println!("teacher: validation perplexity {teacher_ppl:.3} ({teacher_time:.1}s)");

    device.seed(7);
    let init = Lm::new(student_arch, vocab, seq, &device);
    let start = Instant::now();
    println!(
        "student alone: {} layers, d = {}, {} heads",
        student_arch.layers, student_arch.d, student_arch.heads
    );
    let alone = train_alone(init.clone(), &corpus.train, &student_cfg, 7, &device);
    let student_ppl = perplexity(&alone, &valid);
    let alone_time = start.elapsed().as_secs_f64();
    println!("student alone: validation perplexity {student_ppl:.3} ({alone_time:.1}s)");

    let hidden_map =
        LayerMap::uniform_with_embeddings(student_arch.layers, teacher_arch.layers).unwrap();
    println!(
        "distilled student: hidden pairs {:?}, attention pairs {:?}",
        hidden_map.pairs(),
        LayerMap::uniform(student_arch.layers, teacher_arch.layers)
            .unwrap()
            .pairs()
    );
    let hidden = LayeredHiddenLoss::new(
        hidden_map,
        &HiddenProjectionConfig::new(student_arch.d, teacher_arch.d),
        ProjectionSharing::Shared,
        HiddenDistance::Mse,
        &device,
    )
    .unwrap();
    let start = Instant::now();
    let kd = train_distilled(
        KdStudent { lm: init, hidden },
        &teacher,
        &corpus.train,
        &student_cfg,
        &weights,
        7,
        &device,
    );
    let kd_ppl = perplexity(&kd.lm, &valid);
    let kd_time = start.elapsed().as_secs_f64();
    println!("distilled student: validation perplexity {kd_ppl:.3} ({kd_time:.1}s)");

    let params = |m: &Lm| m.num_params();
    println!();
    println!("| model | layers × width | params | train steps | validation perplexity |");
    println!("|---|---|---|---|---|");
    println!(
        "| teacher | {} × {} | {} | {} | {teacher_ppl:.3} |",
        teacher_arch.layers,
        teacher_arch.d,
        params(&teacher),
        teacher_cfg.steps
    );
    println!(
        "| student alone (CE) | {} × {} | {} | {} | {student_ppl:.3} |",
        student_arch.layers,
        student_arch.d,
        params(&alone),
        student_cfg.steps
    );
    println!(
        "| student distilled (CE + logit KD + hidden + attention) | {} × {} | {} (+{} projection) | {} | {kd_ppl:.3} |",
        student_arch.layers,
        student_arch.d,
        params(&kd.lm),
        kd.hidden.num_params(),
        student_cfg.steps
    );
    println!();
    if kd_ppl < student_ppl {
        println!(
            "The distilled student beats the student trained alone ({kd_ppl:.3} vs {student_ppl:.3})."
        );
    } else {
        println!(
            "The distilled student does NOT beat the student trained alone ({kd_ppl:.3} vs {student_ppl:.3})."
        );
    }
    if quick {
        println!(
            "(--quick is a smoke test of a few steps: its perplexities say nothing about distillation.)"
        );
    }
    println!(
        "teacher_ppl={teacher_ppl:.4} student_ppl={student_ppl:.4} kd_student_ppl={kd_ppl:.4}"
    );
}
