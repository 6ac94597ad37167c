//! The micro-step for batches whose logits would be large (a 262,144-token vocabulary over thousands of
//! positions): the output head runs one chunk of positions per MLX evaluation, so at most one chunk's logits
//! exist at a time. Inside one evaluation MLX schedules the chunks side by side and keeps all their logits
//! alive (BENCHMARKS.md), whatever the chunking; only separate evaluations bound it.
//!
//! The chain rule is split where the logits are: (1) the body's forward gives hidden states h, evaluated;
//! (2) each chunk's log-probs, evaluated; (3) the loss and dL/dlogp, a small graph; (4) each chunk's vector-
//! Jacobian product dL/dh (and the head's own trainable parameters' gradients), evaluated; (5) the body's
//! gradient as that of Σ h·(dL/dh), a second forward through the body with its backward. The price is that
//! second body forward; the gradient is the same as the one-graph step's (tested).

use std::{cell::RefCell, rc::Rc};

use mlx_rs::{
    error::Exception,
    module::ModuleParameters,
    nn, ops,
    ops::indexing::IndexOp,
    transforms::{fallible_vjp, value_and_grad},
    Array,
};
use sdk::Loss;

use super::{
    inputs::{loss_inputs, Needs},
    step::{self, head_logps, MicroArgs, TrainState},
};
use crate::{
    data::Packed,
    lora,
    model::{CausalLm, Segments},
};

/// Trainable parameters the head reads (an adapted `lm_head`, trained embeddings), sorted by name.
fn head_parameters(model: &CausalLm) -> Vec<(Rc<str>, Array)> {
    let mut params: Vec<(Rc<str>, Array)> = model
        .trainable_parameters()
        .flatten()
        .into_iter()
        .filter(|(k, _)| k.starts_with("lm_head.") || k.starts_with("model.embed_tokens."))
        .map(|(k, v)| (k, v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// [`super::step::micro`] with the head evaluated `chunk` positions at a time (same arguments and outputs).
pub fn micro_split(
    loss: Rc<dyn Loss>,
    needs: Needs,
    dropout: bool,
    entropy: bool,
    router_coef: Option<f32>,
    packed: bool,
    metric_names: Rc<RefCell<Vec<String>>>,
    chunk: usize,
) -> impl FnMut(&mut TrainState, &[Array]) -> Result<Vec<Array>, Exception> {
    move |(model, (_, (_, (grads, rng)))), args| {
        let MicroArgs { weight, view, loss_key, real, packed } = MicroArgs::take(args, needs, dropout, router_coef.is_some(), packed, model, rng)?;
        let segments = packed.as_ref().map(|p| Segments::new(p.segments.clone()));

        // (1) Hidden states, without a gradient graph (packed sequences stay packed up to the loss).
        let hidden = mlx_rs::stop_gradient(&model.model.forward_routed(&view[0], None, None, segments.as_ref())?.0)?;
        hidden.eval()?;
        let s = hidden.shape().to_vec();
        let (b, t, h) = (s[0], s[1], s[2]);
        let n = (b * t) as usize;
        let flat = hidden.reshape(&[1, b * t, h])?;
        let targets = view[1].reshape(&[1, b * t])?;
        let chunks: Vec<(i32, i32)> = (0..n).step_by(chunk.max(1)).map(|start| (start as i32, (start + chunk).min(n) as i32)).collect();

        // (2) Log-probs (and entropies), a chunk per evaluation.
        let (mut logps, mut entropies) = (Vec::new(), Vec::new());
        for &(start, end) in &chunks {
            let (lp, ent) = head_logps(model, &flat.index((.., start..end, ..)), &targets.index((.., start..end)), entropy)?;
            mlx_rs::transforms::eval(std::iter::once(&lp).chain(&ent))?;
            logps.push(lp);
            entropies.extend(ent);
        }
        let logps = ops::concatenate(&logps, 1)?.reshape(&[b, t])?;

        // (3) The loss, its metrics, and its gradient with respect to the log-probs.
        let names = metric_names.clone();
        let loss = loss.clone();
        let loss_view = view.clone();
        let layout = packed.as_ref().map(|p| Packed { segments: p.segments.clone(), gather: p.gather.clone() });
        let f = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
            let mut old = None;
            let rows = step::unpack(&a[0], layout.as_ref())?;
            let inputs = loss_inputs(needs, &loss_view, &rows, loss_key.as_ref(), &mut old)?;
            let out = loss.forward(&inputs).map_err(|e| Exception::custom(e.to_string()))?;
            *names.borrow_mut() = out.metrics.iter().map(|(n, _)| n.clone()).collect();
            Ok(std::iter::once(out.loss).chain(out.metrics.into_iter().map(|(_, a)| a)).collect())
        };
        let (mut values, g) = value_and_grad(f)(&[logps])?;
        let g_logps = g.into_iter().next().ok_or_else(|| Exception::custom("no gradient for the log-probs"))?.reshape(&[1, b * t])?;
        g_logps.eval()?;
        if entropy {
            let h_all = step::unpack(&ops::concatenate(&entropies, 1)?.reshape(&[b, t])?, packed.as_ref())?;
            let mask = &view[2];
            let tokens = ops::maximum(mask.sum(None)?, Array::from_f32(1.0))?;
            values.push(h_all.multiply(mask)?.sum(None)?.divide(&tokens)?);
            metric_names.borrow_mut().push("entropy".to_owned());
        }

        // (4) dL/dh and the head parameters' gradients, a chunk per evaluation.
        let head_params = head_parameters(model);
        let mut head_grads: Vec<Option<Array>> = vec![None; head_params.len()];
        let mut dh = Vec::with_capacity(chunks.len());
        // One copy of the model whose head parameters each chunk's product takes as inputs.
        let names: Vec<Rc<str>> = head_params.iter().map(|(k, _)| k.clone()).collect();
        let mut head: CausalLm = model.clone();
        for &(start, end) in &chunks {
            let chunk_targets = targets.index((.., start..end));
            let f = |a: &[Array]| -> Result<Vec<Array>, Exception> {
                head.update_flattened(names.iter().cloned().zip(a[1..].iter().cloned()).collect());
                Ok(vec![head_logps(&head, &a[0], &chunk_targets, false)?.0])
            };
            let primals: Vec<Array> = std::iter::once(flat.index((.., start..end, ..))).chain(head_params.iter().map(|(_, v)| v.clone())).collect();
            let (_, vjps) = fallible_vjp(f, &primals, &[g_logps.index((.., start..end))])?;
            let mut vjps = vjps.into_iter();
            let d = vjps.next().ok_or_else(|| Exception::custom("no gradient for the hidden states"))?;
            for (acc, g) in head_grads.iter_mut().zip(vjps) {
                *acc = Some(match acc.take() {
                    Some(a) => a.add(&g)?,
                    None => g,
                });
            }
            mlx_rs::transforms::eval(std::iter::once(&d).chain(head_grads.iter().flatten()))?;
            dh.push(d);
        }
        let dh = mlx_rs::stop_gradient(&ops::concatenate(&dh, 1)?.reshape(&[b, t, h])?)?;
        dh.eval()?;

        // (5) The body's gradient: that of Σ h · dL/dh (plus the weighted router loss, which the body alone
        // computes).
        let inputs = view[0].clone();
        let surrogate = move |m: &mut CausalLm, _: &[Array]| -> Result<Vec<Array>, Exception> {
            let (h, router_loss) = m.model.forward_routed(&inputs, None, real.as_ref(), segments.as_ref())?;
            let mut out = vec![h.multiply(&dh)?.sum(None)?];
            if let Some(coef) = router_coef {
                let aux = router_loss.ok_or_else(|| Exception::custom("router_aux_loss_coef is set but the model has no router"))?;
                out[0] = out[0].add(aux.multiply(Array::from_f32(coef))?)?;
                out.push(mlx_rs::stop_gradient(&aux)?);
            }
            Ok(out)
        };
        let mut vg = nn::value_and_grad(surrogate);
        let (surrogate_values, mut body_grads) = vg(model, &[][..])?;
        if let Some(coef) = router_coef {
            step::add_router_loss(&mut values, &mut metric_names.borrow_mut(), coef, surrogate_values.into_iter().nth(1))?;
        }
        for ((name, _), g) in head_params.iter().zip(head_grads) {
            if let Some(g) = g {
                let total = match body_grads.get(name) {
                    Some(b) => b.add(&g)?,
                    None => g,
                };
                body_grads.insert(name.clone(), total);
            }
        }
        grads.accumulate(&body_grads, &weight)?;
        if dropout {
            lora::set_dropout_key(model, None)?;
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use mlx_rs::{random::RandomState, Array, Dtype};

    use super::*;
    use crate::{
        config::{OptimizerConfig, OptimizerKind},
        fixture::{self, Family, Preset},
        lora::LoraSettings,
        model::{self, LoadOptions},
        optim::LearningRate,
        plugins::Registry,
        train::{step, tuning::FullTuning, GradBuffer, TrainOptimizer},
    };

    /// The accumulated gradient of one micro-step with a 0.5 weight, by name.
    fn gradient(model: CausalLm, split: Option<usize>, entropy: bool) -> (Vec<(String, Vec<f32>)>, Vec<f32>) {
        gradient_routed(model, split, entropy, None)
    }

    /// [`gradient`], with the routers' load-balancing loss weighted by `router` (row 2 ends in two padding
    /// positions, which it must not see).
    fn gradient_routed(model: CausalLm, split: Option<usize>, entropy: bool, router: Option<f32>) -> (Vec<(String, Vec<f32>)>, Vec<f32>) {
        let registry = Registry::builtin().unwrap();
        let loss: Rc<dyn sdk::Loss> = Rc::from(registry.loss("sft", &sdk::toml::Table::new()).unwrap());
        let needs = crate::train::inputs::Needs::of("sft", loss.requirements()).unwrap();
        let config = OptimizerConfig { kind: OptimizerKind::Sgd, lr: 1.0, weight_decay: None, betas: None, eps: None, momentum: None };
        let grads = GradBuffer::zeros_like(&model).unwrap();
        let mut ts: step::TrainState = (model, (TrainOptimizer::build(&config).unwrap(), (LearningRate::new(1.0), (grads, RandomState::with_seed(0).unwrap()))));
        let names = Rc::new(RefCell::new(Vec::new()));
        let inputs = Array::from_slice(&[5i32, 17, 99, 200, 33, 41, 7, 300, 2, 8, 9, 10, 11, 12, 13, 14, 15, 16], &[2, 9]);
        let targets = Array::from_slice(&[17i32, 99, 200, 33, 41, 7, 300, 2, 3, 9, 10, 11, 12, 13, 14, 15, 16, 1], &[2, 9]);
        let mask = Array::from_slice(&[0f32, 0., 1., 1., 1., 1., 1., 1., 1., 0., 1., 1., 1., 1., 1., 1., 0., 0.], &[2, 9]);
        let mut args = vec![inputs, targets, mask, Array::from_f32(0.5)];
        if router.is_some() {
            args.push(Array::from_slice(&[1f32, 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 0., 0.], &[2, 9]));
        }
        let values = match split {
            Some(chunk) => micro_split(loss, needs, false, entropy, router, false, names, chunk)(&mut ts, &args).unwrap(),
            None => step::micro(loss, needs, false, entropy, router, false, names)(&mut ts, &args).unwrap(),
        };
        let (n, v) = ts.1 .1 .1 .0.values();
        let grads = n.iter().zip(v).map(|(n, v)| (n.to_string(), v.as_dtype(Dtype::Float32).unwrap().to_vec_exact::<f32>().unwrap())).collect();
        (grads, values.iter().map(|v| v.item_exact::<f32>()).collect())
    }

    fn assert_same(a: &(Vec<(String, Vec<f32>)>, Vec<f32>), b: &(Vec<(String, Vec<f32>)>, Vec<f32>), what: &str) {
        for (x, y) in a.1.iter().zip(&b.1) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{what}: loss/metric {x} vs {y}");
        }
        assert_eq!(a.0.len(), b.0.len());
        for ((name, x), (_, y)) in a.0.iter().zip(&b.0) {
            let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            // The same float32 products summed in another grouping (per chunk, then over chunks): ~1e-7 of
            // the peak; a dropped chunk, a missing head gradient or an unweighted sum is of the peak's order.
            assert!(peak > 0.0 && worst <= 1e-4 * peak, "{what}: {name}: worst {worst:e} of peak {peak:e}");
        }
    }

    #[test]
    fn the_split_head_gives_the_one_graph_gradient() {
        let dir = std::env::temp_dir().join(format!("host-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // LoRA on every linear layer of an untied Llama (its lm_head adapted: head parameters' gradients).
        fixture::write(&dir.join("llama"), Family::Llama, Preset::Tiny, 1).unwrap();
        let opts = LoadOptions { dtype: Some(Dtype::Float32), quantize: None };
        let lora_model = || {
            let mut m = model::load(&dir.join("llama"), &opts).unwrap().model;
            let settings = LoraSettings { rank: 4, scale: 10.0, dropout: 0.0, dora: false, last_n_layers: None };
            let paths = m.linear_paths();
            assert!(paths.iter().any(|t| t == "lm_head"), "{paths:?}");
            crate::lora::apply_explicit(&mut m, &paths, &settings, 3).unwrap();
            // B = 0 would make every A gradient zero: give the adapters a value.
            for (_, l) in m.linears_mut() {
                let b = (*l.lora_b).clone().unwrap();
                *l.lora_b = Some(mlx_rs::random::normal::<f32>(b.shape(), None, Some(0.01), &mlx_rs::random::key(7).unwrap()).unwrap());
            }
            m
        };
        let one = gradient(lora_model(), None, true);
        // Chunks of 5 positions over 18: four evaluations, the last one short.
        assert_same(&one, &gradient(lora_model(), Some(5), true), "LoRA, chunks of 5");
        assert_same(&one, &gradient(lora_model(), Some(18), true), "LoRA, one chunk");

        // Full fine-tuning of a tied Qwen2: the embedding's gradient comes from the body and from the head.
        fixture::write(&dir.join("qwen2"), Family::Qwen2, Preset::Tiny, 2).unwrap();
        let full_model = || {
            let mut loaded = model::load(&dir.join("qwen2"), &opts).unwrap();
            FullTuning::apply(&mut loaded, None).unwrap();
            loaded.model
        };
        assert_same(&gradient(full_model(), None, false), &gradient(full_model(), Some(4), false), "full, chunks of 4");

        // Full fine-tuning of a Qwen3-MoE with the router loss: the split head adds it (and its gradient,
        // which reaches the routers only through the body) as the one graph does.
        fixture::write(&dir.join("moe"), Family::Qwen3Moe, Preset::Tiny, 3).unwrap();
        let moe_model = || {
            let mut loaded = model::load(&dir.join("moe"), &opts).unwrap();
            FullTuning::apply(&mut loaded, None).unwrap();
            loaded.model
        };
        let plain = gradient(moe_model(), None, true);
        let routed = gradient_routed(moe_model(), None, true, Some(0.5));
        assert_same(&routed, &gradient_routed(moe_model(), Some(4), true, Some(0.5)), "MoE with the router loss, chunks of 4");
        // [loss, entropy, router_aux_loss]: the loss gained 0.5 × the router loss (the micro-batch weight scales
        // the gradient, not the returned values).
        assert_eq!(routed.1.len(), plain.1.len() + 1);
        let aux = routed.1[routed.1.len() - 1];
        assert!(aux > 0.0, "{aux}");
        assert!((routed.1[0] - (plain.1[0] + 0.5 * aux)).abs() < 1e-5, "{} vs {} + 0.5·{aux}", routed.1[0], plain.1[0]);
        let router_grad = |g: &(Vec<(String, Vec<f32>)>, Vec<f32>)| g.0.iter().find(|(n, _)| n.ends_with("mlp.gate.weight")).unwrap().1.clone();
        assert_ne!(router_grad(&plain), router_grad(&routed), "the router loss reaches the routers");
    }
}
