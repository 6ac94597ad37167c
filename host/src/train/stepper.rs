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
    /// This step's micro-batch values (loss, then metrics, each times the micro-batch's weight) by position;
    /// `None` where another rank computes it.
    slots: Vec<Option<Vec<f64>>>,
    /// `[train] dp_shards` (D): micro-batch j belongs to shard j mod D.
    shards: usize,
    /// The gradients of this process's shards after the first (whose buffer is the train state's): more
    /// than one only when one process stands in for several ranks.
    more_shards: Vec<GradBuffer>,
    seed: u64,
    step: u64,
    /// Time this step spent blocked on the device.
    waited: Duration,
}

/// The PRNG seed of micro-batch `j` of step `step` (dropout, a loss's sampling): a function of the position
/// alone, so a micro-batch draws the same numbers on whichever rank computes it, and after a resume.
fn micro_seed(seed: u64, step: u64, j: usize) -> u64 {
    crate::data::SplitMix::new(seed ^ 0x5851_f42d_4c95_7f2d ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (j as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)).next()
}

impl Stepper {
    /// `entropy` adds the mean predictive entropy over the mask to the metrics.
    pub fn new(config: &RunConfig, model: CausalLm, optimizer: TrainOptimizer, rng: RandomState, loss: Rc<dyn Loss>, needs: Needs, entropy: bool) -> Result<Self, TrainError> {
        let grads = GradBuffer::zeros_like(&model)?;
        let world = crate::dist::world();
        let shards = config.train.dp_shards.unwrap_or(world.size());
        if shards == 0 || (world.size() > 1 && shards != world.size()) {
            return Err(TrainError::Config(format!(
                "[train] dp_shards = {shards} with {} rank(s): one shard per rank, or any number of shards in one process",
                world.size()
            )));
        }
        if config.train.grad_accumulation_steps % shards as u64 != 0 {
            return Err(TrainError::Config(format!(
                "[train] grad_accumulation_steps = {} must be a multiple of the data-parallel shards ({shards}): every rank takes the same number of micro-batches",
                config.train.grad_accumulation_steps
            )));
        }
        let more_shards = (1..shards / world.size()).map(|_| GradBuffer::zeros_like(&model)).collect::<Result<_, _>>()?;
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
            slots: Vec::new(),
            shards,
            more_shards,
            seed: config.train.seed,
            step: 0,
            waited: Duration::ZERO,
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.ts.1 .1 .0.set(lr);
    }

    /// Starts the step after `done` steps, of `micro_batches` micro-batches in all (over every rank).
    pub fn begin(&mut self, done: u64, micro_batches: usize) {
        self.step = done;
        self.slots = vec![None; micro_batches];
    }

    /// Whether this process computes micro-batch `j` of the step.
    pub fn owns(&self, j: usize) -> bool {
        let world = crate::dist::world();
        (j % self.shards) % world.size() == world.rank()
    }

    /// Micro-batch `j` of the step (one this process [owns](Self::owns)): `args` are inputs, targets, mask and
    /// the loss's inputs (see [`super::inputs`]); `real` marks its non-padding inputs; `packed` is its layout
    /// when packed; `weight` is its share of the step.
    pub fn micro(&mut self, j: usize, mut args: Vec<Array>, real: &Array, packed: Option<&Packed>, weight: f32) -> Result<(), TrainError> {
        if j >= self.slots.len() || !self.owns(j) {
            return Err(TrainError::Config(format!("micro-batch {j} is not this process's (of {} this step)", self.slots.len())));
        }
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
        self.ts.1 .1 .1 .1.seed(micro_seed(self.seed, self.step, j))?;
        let local = (j % self.shards) / crate::dist::world().size();
        if local > 0 {
            std::mem::swap(&mut self.ts.1 .1 .1 .0, &mut self.more_shards[local - 1]);
        }
        let values = if split { (self.split)(&mut self.ts, &args[..]) } else { (self.micro)(&mut self.ts, &args[..]) };
        if local > 0 {
            std::mem::swap(&mut self.ts.1 .1 .1 .0, &mut self.more_shards[local - 1]);
        }
        let values = values?;
        self.wait(&values)?;
        self.slots[j] = Some(values.iter().map(|v| Ok(scalar(v)? * f64::from(weight))).collect::<Result<_, TrainError>>()?);
        Ok(())
    }

    /// The step's weighted loss and metrics: every rank's micro-batch values, summed in micro-batch order
    /// (as one process sums them), bit for bit the same on every rank.
    fn step_values(&mut self) -> Result<(f64, Vec<f64>), TrainError> {
        let slots = std::mem::take(&mut self.slots);
        let width = slots.iter().flatten().map(Vec::len).next().ok_or_else(|| TrainError::Config("a step without micro-batches".into()))?;
        if slots.iter().flatten().any(|v| v.len() != width) {
            return Err(TrainError::Mlx("micro-batches of one step returned different numbers of metrics".into()));
        }
        let flat: Vec<f64> = slots.iter().flat_map(|v| v.clone().unwrap_or_else(|| vec![0.0; width])).collect();
        let merged = crate::dist::world().merge_slots(&flat)?;
        let mut sums = vec![0.0f64; width];
        for row in merged.chunks(width) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
        let loss = sums.remove(0);
        Ok((loss, sums))
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
        let (loss, metrics) = self.step_values()?;
        if !loss.is_finite() {
            self.ts.1 .1 .1 .0 = GradBuffer::zeros_like(&self.ts.0)?;
            for b in &mut self.more_shards {
                *b = GradBuffer::zeros_like(&self.ts.0)?;
            }
            let checkpoint = session::save_checkpoint(config, tuning, &mut self.ts, state, extra)?;
            return Err(TrainError::NonFinite { step: state.step + 1, what: "loss", value: loss, checkpoint });
        }
        // This process's shards in shard order, then the ranks' sums: a 2-rank sum is bitwise g0 + g1.
        for b in &mut self.more_shards {
            self.ts.1 .1 .1 .0.add_and_clear(b)?;
        }
        self.ts.1 .1 .1 .0.reduce(crate::dist::world())?;
        let norm = (self.apply)(&mut self.ts, &[][..])?;
        let norm = norm.first().ok_or_else(|| TrainError::Mlx("the update returned no gradient norm".into()))?.clone();
        self.wait(std::slice::from_ref(&norm))?;
        let grad_norm = scalar(&norm)?;
        if !grad_norm.is_finite() {
            // The update was not applied (see `step::apply`) and the accumulator is already cleared.
            let checkpoint = session::save_checkpoint(config, tuning, &mut self.ts, state, extra)?;
            return Err(TrainError::NonFinite { step: state.step + 1, what: "gradient norm", value: grad_norm, checkpoint });
        }
        // Draws are keyed by position (`micro_seed`); a canonical state after the step keeps a checkpoint the
        // same whichever rank last drew.
        self.ts.1 .1 .1 .1.seed(micro_seed(self.seed, self.step + 1, usize::MAX))?;
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
