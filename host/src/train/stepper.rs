//! The optimizer step every trainer takes: micro-batches accumulate weighted gradients (through the compiled
//! step when the optimizer allows it), their loss and metrics are averaged with the same weights, then one
//! clipped update applies the sum.
//!
//! The host waits for the device twice per step: for the loss after the forward pass (a non-finite loss is
//! never applied, and the forward's buffers are released before the backward pass is encoded), and for the
//! gradient norm after the backward pass. Keeping the whole step lazy with one wait at its end was measured on
//! an H200 (BENCHMARKS.md, issue 16): no faster, and 30% more peak memory, since the host then encodes the
//! backward pass's allocations while the forward still holds its own.

use std::{
    cell::RefCell,
    rc::Rc,
    time::{Duration, Instant},
};

use mlx_rs::{
    error::Exception,
    random::RandomState,
    transforms::{async_eval, compile::compile_with_state, eval},
    Array,
};
use sdk::Loss;

use super::{inputs::Needs, scalar, session, split_head, step, tuning::Tuning, GradBuffer, TrainError, TrainOptimizer, TrainState, TrainerState};
use crate::{
    config::{RunConfig, SplitHead},
    data::Packed,
    model::CausalLm,
    optim::LearningRate,
};

/// `split_head = "auto"` splits micro-batches whose float32 logits would exceed 1 GiB.
const SPLIT_LOGITS_ABOVE: usize = 1 << 28;
/// Logits per evaluation in the split head (128 MiB in float32): 128 positions of a 262,144-token vocabulary.
pub(super) const SPLIT_CHUNK_ELEMENTS: usize = 1 << 25;

/// Whether a micro-batch with this many logits takes the split head.
pub(super) fn splits(setting: SplitHead, logits: usize) -> bool {
    match setting {
        SplitHead::On => true,
        SplitHead::Off => false,
        SplitHead::Auto => logits > SPLIT_LOGITS_ABOVE,
    }
}

type StepFn = Box<dyn for<'a> FnMut(&mut TrainState, &'a [Array]) -> Result<Vec<Array>, Exception>>;

pub struct Stepper {
    pub ts: TrainState,
    /// The loss plugin's metric names (and `entropy` when asked for), known once the step has run.
    pub metric_names: Rc<RefCell<Vec<String>>>,
    micro: StepFn,
    /// The micro-step with the head evaluated a chunk at a time, for micro-batches with large logits.
    split: StepFn,
    split_head: SplitHead,
    vocab: usize,
    /// The router loss is on: micro-batches carry their real-token mask.
    routed: bool,
    /// `[data] packing`: micro-batches carry their packed layout.
    packed: bool,
    apply: StepFn,
    loss: f64,
    metrics: Vec<f64>,
    /// Time this step spent blocked on the device.
    waited: Duration,
}

impl Stepper {
    /// `entropy` adds the mean predictive entropy over the mask to the metrics.
    pub fn new(config: &RunConfig, model: CausalLm, optimizer: TrainOptimizer, rng: RandomState, loss: Rc<dyn Loss>, needs: Needs, entropy: bool) -> Result<Self, TrainError> {
        let grads = GradBuffer::zeros_like(&model)?;
        let vocab = model.config.vocab_size.max(1) as usize;
        let compiled = config.train.compile && optimizer.compilable();
        let ts: TrainState = (model, (optimizer, (LearningRate::new(config.optimizer.lr), (grads, rng))));
        let metric_names = Rc::new(RefCell::new(Vec::new()));
        let dropout = config.lora.as_ref().is_some_and(|l| l.dropout > 0.0);
        let max_norm = config.train.max_grad_norm.map(|n| n as f32);
        let router_coef = (config.train.router_aux_loss_coef > 0.0).then_some(config.train.router_aux_loss_coef as f32);
        if router_coef.is_some() && !ts.0.model.has_sparse_layers() {
            return Err(TrainError::Config("[train] router_aux_loss_coef: the model has no mixture-of-experts layers, so there is no router to balance".into()));
        }
        let chunk = (SPLIT_CHUNK_ELEMENTS / vocab.max(1)).max(1);
        let packed = config.data.as_ref().is_some_and(|d| d.packing);
        let split = Box::new(split_head::micro_split(loss.clone(), needs, dropout, entropy, router_coef, packed, metric_names.clone(), chunk));
        let micro = step::micro(loss, needs, dropout, entropy, router_coef, packed, metric_names.clone());
        let (micro, apply): (StepFn, StepFn) = if compiled {
            (Box::new(compile_with_state(micro, None)), Box::new(compile_with_state(step::apply(max_norm), None)))
        } else {
            (Box::new(micro), Box::new(step::apply(max_norm)))
        };
        Ok(Stepper {
            ts,
            metric_names,
            micro,
            split,
            split_head: config.train.split_head,
            vocab,
            routed: router_coef.is_some(),
            packed,
            apply,
            loss: 0.0,
            metrics: Vec::new(),
            waited: Duration::ZERO,
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.ts.1 .1 .0.set(lr);
    }

    /// One micro-batch: `args` are inputs, targets, mask and the loss's inputs (see [`super::inputs`]);
    /// `real` marks its non-padding inputs; `packed` is its layout when packed; `weight` is its share of the step.
    pub fn micro(&mut self, mut args: Vec<Array>, real: &Array, packed: Option<&Packed>, weight: f32) -> Result<(), TrainError> {
        args.insert(3, Array::from_f32(weight));
        if self.routed {
            args.push(real.clone());
        }
        match (self.packed, packed) {
            (true, Some(p)) => args.extend([p.segments.clone(), p.gather.clone()]),
            (false, None) => {}
            (expected, _) => return Err(TrainError::Config(format!("a micro-batch {} packed but the step {} packed ones", if expected { "is not" } else { "is" }, if expected { "takes" } else { "does not take" }))),
        }
        let logits = args[0].size() * self.vocab;
        let split = splits(self.split_head, logits);
        let values = if split { (self.split)(&mut self.ts, &args[..])? } else { (self.micro)(&mut self.ts, &args[..])? };
        self.wait(&values)?;
        self.loss += scalar(&values[0])? * f64::from(weight);
        self.metrics.resize(values.len() - 1, 0.0);
        for (m, v) in self.metrics.iter_mut().zip(&values[1..]) {
            *m += scalar(v)? * f64::from(weight);
        }
        Ok(())
    }

    /// Dispatches `outputs` and waits for them, counting only the wait.
    fn wait(&mut self, outputs: &[Array]) -> Result<(), TrainError> {
        async_eval(outputs)?;
        let started = Instant::now();
        eval(outputs)?;
        self.waited += started.elapsed();
        Ok(())
    }

    /// Ends the step `state` is about to complete: clips and applies the accumulated gradient and returns the
    /// weighted loss, metrics and gradient norm (before clipping). A non-finite loss is never applied: the
    /// gradient is dropped, a checkpoint of the last good state is written, and the error names it.
    pub fn finish(&mut self, config: &RunConfig, tuning: &Tuning, state: &TrainerState, extra: &serde_json::Map<String, serde_json::Value>) -> Result<StepResult, TrainError> {
        let (loss, metrics) = (std::mem::take(&mut self.loss), std::mem::take(&mut self.metrics));
        if !loss.is_finite() {
            self.ts.1 .1 .1 .0 = GradBuffer::zeros_like(&self.ts.0)?;
            let checkpoint = session::save_checkpoint(config, tuning, &mut self.ts, state, extra)?;
            return Err(TrainError::NonFinite { step: state.step + 1, what: "loss", value: loss, checkpoint });
        }
        let norm = (self.apply)(&mut self.ts, &[][..])?;
        let norm = norm.first().ok_or_else(|| TrainError::Mlx("the update returned no gradient norm".into()))?.clone();
        self.wait(std::slice::from_ref(&norm))?;
        let grad_norm = scalar(&norm)?;
        if !grad_norm.is_finite() {
            // The update was not applied (see `step::apply`) and the accumulator is already cleared.
            let checkpoint = session::save_checkpoint(config, tuning, &mut self.ts, state, extra)?;
            return Err(TrainError::NonFinite { step: state.step + 1, what: "gradient norm", value: grad_norm, checkpoint });
        }
        Ok(StepResult { loss, metrics, grad_norm, waited: std::mem::take(&mut self.waited) })
    }
}

/// What a finished step reports.
pub struct StepResult {
    pub loss: f64,
    /// In the order of [`Stepper::metric_names`].
    pub metrics: Vec<f64>,
    pub grad_norm: f64,
    /// Time the host spent waiting for the device to finish the step's work; the rest of a step's time is
    /// the host's (data, building and dispatching the graph).
    pub waited: Duration,
}
