//! A packed micro-step equals the padded micro-step of the same rows: the loss, its metrics and every
//! gradient, for each dataset loss, with sliding windows, the router loss and the split head.

use std::{cell::RefCell, rc::Rc};

use mlx_rs::{random::RandomState, Array, Dtype};

use super::{
    inputs::{batch_arrays, Needs},
    reference::ReferenceSource,
    split_head::micro_split,
    step::{self, TrainState},
    tuning::FullTuning,
    GradBuffer, TrainOptimizer,
};
use crate::{
    config::{OptimizerConfig, OptimizerKind},
    data::{assemble, Batch, Example, Item, PackInto, SplitMix},
    fixture::{self, Family, Preset},
    lora::LoraSettings,
    model::{self, CausalLm, LoadOptions},
    optim::LearningRate,
    plugins::Registry,
};

type Outcome = (Vec<(String, Vec<f32>)>, Vec<f32>);

fn load(dir: &std::path::Path, family: Family, seed: u64, lora: bool) -> CausalLm {
    let path = dir.join(format!("{family:?}"));
    if !path.exists() {
        fixture::write(&path, family, Preset::Tiny, seed).unwrap();
    }
    let mut loaded = model::load(&path, &LoadOptions { dtype: Some(Dtype::Float32), quantize: None }).unwrap();
    if !lora {
        FullTuning::apply(&mut loaded, None).unwrap();
        return loaded.model;
    }
    let mut m = loaded.model;
    let settings = LoraSettings { rank: 4, scale: 10.0, dropout: 0.0, dora: false, last_n_layers: None };
    let paths = m.linear_paths();
    crate::lora::apply_explicit(&mut m, &paths, &settings, 3).unwrap();
    // B = 0 would make the reference (adapters off) equal the policy and every A gradient zero.
    for (_, l) in m.linears_mut() {
        let b = (*l.lora_b).clone().unwrap();
        *l.lora_b = Some(mlx_rs::random::normal::<f32>(b.shape(), None, Some(0.05), &mlx_rs::random::key(7).unwrap()).unwrap());
    }
    m
}

/// Rows of 5 to 20 tokens (a prompt of 2 to 4), `sequences` per item; labels alternate when `labelled`.
fn items(n: usize, sequences: usize, labelled: bool, seed: u64) -> Vec<Item> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|i| {
            let prompt_len = 2 + rng.below(3);
            let prompt: Vec<u32> = (0..prompt_len).map(|_| 3 + rng.below(500) as u32).collect();
            let examples = (0..sequences)
                .map(|_| {
                    let mut tokens = prompt.clone();
                    let total = 5 + rng.below(16);
                    tokens.extend((prompt_len..total).map(|_| 3 + rng.below(500) as u32));
                    Example { supervised: (0..tokens.len()).map(|j| j >= prompt_len).collect(), tokens, truncated: false }
                })
                .collect();
            Item { examples, label: labelled.then_some(i % 2 == 0) }
        })
        .collect()
}

struct Case {
    loss: &'static str,
    entropy: bool,
    router: Option<f32>,
    split: Option<usize>,
}

/// One weighted micro-step on `batch`: the accumulated gradient by name, and the returned values.
fn micro(model: CausalLm, case: &Case, batch: &Batch) -> Outcome {
    let registry = Registry::builtin().unwrap();
    let loss: Rc<dyn sdk::Loss> = Rc::from(registry.loss(case.loss, &sdk::toml::Table::new()).unwrap());
    let needs = Needs::of(case.loss, loss.requirements()).unwrap();
    let config = OptimizerConfig { kind: OptimizerKind::Sgd, lr: 1.0, weight_decay: None, betas: None, eps: None, momentum: None };
    let grads = GradBuffer::zeros_like(&model).unwrap();
    let mut ts: TrainState = (model, (TrainOptimizer::build(&config).unwrap(), (LearningRate::new(1.0), (grads, RandomState::with_seed(0).unwrap()))));
    let source = needs.reference.then_some(ReferenceSource::AdaptersOff);
    let mut args = batch_arrays(batch, needs, &mut ts.0, source.as_ref()).unwrap();
    args.insert(3, Array::from_f32(0.5));
    if case.router.is_some() {
        args.push(batch.real.clone());
    }
    if let Some(p) = &batch.packed {
        args.extend([p.segments.clone(), p.gather.clone()]);
    }
    let packed = batch.packed.is_some();
    let names = Rc::new(RefCell::new(Vec::new()));
    let values = match case.split {
        Some(chunk) => micro_split(loss, needs, false, case.entropy, case.router, packed, names, chunk)(&mut ts, &args).unwrap(),
        None => step::micro(loss, needs, false, case.entropy, case.router, packed, names)(&mut ts, &args).unwrap(),
    };
    let (n, v) = ts.1 .1 .1 .0.values();
    let grads = n.iter().zip(v).map(|(n, v)| (n.to_string(), v.as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap())).collect();
    (grads, values.iter().map(|v| v.item_exact::<f32>()).collect())
}

fn assert_same(padded: &Outcome, packed: &Outcome, what: &str) {
    assert_eq!(padded.1.len(), packed.1.len(), "{what}: values");
    for (x, y) in padded.1.iter().zip(&packed.1) {
        assert!((x - y).abs() <= 2e-5 * x.abs().max(1.0), "{what}: loss/metric {x} vs {y}");
    }
    assert_eq!(padded.0.len(), packed.0.len());
    for ((name, x), (_, y)) in padded.0.iter().zip(&packed.0) {
        let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        // The same float32 arithmetic per row, grouped differently (matmuls over other shapes, softmaxes over
        // more masked keys, rotation angles at larger positions): ~1e-6 of the peak. Attention leaking into a
        // neighbouring row or a row gathered from the wrong place moves gradients by the peak's order.
        assert!(peak > 0.0 && worst <= 1e-4 * peak, "{what}: {name}: worst {worst:e} of peak {peak:e}");
    }
}

#[test]
fn a_packed_step_equals_the_padded_step_for_every_dataset_loss() {
    let dir = std::env::temp_dir().join(format!("host-packing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two sequences of 40 positions: most rows share a sequence with others; some need a third sequence.
    let into = PackInto { bins: 2, width: 40 };
    let single = items(7, 1, false, 1);
    let pairs = items(4, 2, false, 2);
    let labelled = items(6, 1, true, 3);
    let partners: Vec<Item> = (0..labelled.len()).map(|i| labelled[(i + labelled.len() - 1) % labelled.len()].clone()).collect();
    let both = |items: &[Item], partners: Option<&[Item]>| -> (Batch, Batch) {
        let refs: Vec<&Item> = items.iter().collect();
        let partner_refs: Option<Vec<&Item>> = partners.map(|p| p.iter().collect());
        let make = |pack| assemble(&refs, partner_refs.as_deref(), 4, 64, pack);
        (make(None), make(Some(into)))
    };
    let (single_padded, single_packed) = both(&single, None);
    assert!(single_packed.padded_tokens < single_padded.padded_tokens, "packing computes fewer positions");
    let (pairs_padded, pairs_packed) = both(&pairs, None);
    let (kto_padded, kto_packed) = both(&labelled, Some(&partners));
    assert!(kto_packed.kl.as_ref().is_some_and(|kl| kl.packed.is_some()), "KTO's mismatched pairs are packed too");

    let plain = |loss| Case { loss, entropy: false, router: None, split: None };
    for (family, seed) in [(Family::Qwen2, 1), (Family::Gemma3Text, 2)] {
        let m = || load(&dir, family, seed, true);
        // Gemma 3's fixture alternates sliding-window (4) and full layers: the window applies within a row.
        let sft = Case { entropy: true, ..plain("sft") };
        assert_same(&micro(m(), &sft, &single_padded), &micro(m(), &sft, &single_packed), &format!("{family:?} sft"));
        for loss in ["dpo", "orpo", "simpo"] {
            assert_same(&micro(m(), &plain(loss), &pairs_padded), &micro(m(), &plain(loss), &pairs_packed), &format!("{family:?} {loss}"));
        }
        assert_same(&micro(m(), &plain("kto"), &kto_padded), &micro(m(), &plain("kto"), &kto_packed), &format!("{family:?} kto"));
    }
    // The router loss over real positions only, and the split head (chunks of 7 over the packed positions).
    let moe = || load(&dir, Family::Qwen3Moe, 3, false);
    let routed = Case { router: Some(0.5), ..plain("sft") };
    assert_same(&micro(moe(), &routed, &single_padded), &micro(moe(), &routed, &single_packed), "MoE with the router loss");
    let split = Case { entropy: true, split: Some(7), ..plain("sft") };
    let llama = || load(&dir, Family::Llama, 4, true);
    let whole = Case { entropy: true, ..plain("sft") };
    assert_same(&micro(llama(), &whole, &single_padded), &micro(llama(), &split, &single_packed), "split head");
    let _ = std::fs::remove_dir_all(&dir);
}
