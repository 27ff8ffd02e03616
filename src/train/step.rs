//! The training step: the model, its parameters, the optimiser, the loss watch and the feed, and
//! on a GPU the step captured as a CUDA graph.
//!
//! One step: the batch onto the device ([`Feed`]), gradients zeroed in their kept buffers,
//! forward, the loss (the mean of both images' cross-entropies) handed to the [`LossWatch`],
//! backward and the optimiser step at the learning rate the watch supplies. On a GPU nothing in
//! it waits for the host, so after [`GRAPH_WARMUP`] eager steps (which fill the allocator's cache
//! and build the optimiser's table) the step from the gradients on is captured once
//! ([`crate::backend::cuda::graph`]) and replayed every step after: one launch instead of about
//! 1,300. If the capture fails, the runner says why and goes on eagerly.

use crate::autograd::{ParamStore, in_part};
use crate::backend::cuda::CudaDevice;
use crate::backend::cuda::graph::{self, CapturedGraph};
use crate::device::Device;
use crate::error::Result;
use crate::nn::CosegNet;
use crate::tensor::Tensor;
use crate::train::dataset::{Batch, HostBatch};
use crate::train::feed::Feed;
use crate::train::monitor::{LossWatch, StepSource};
use crate::train::optim::Optimizer;

/// Eager steps before the capture.
pub const GRAPH_WARMUP: usize = 2;

/// How work that can be captured as a CUDA graph runs (the training step here, the evaluation
/// forward in `infer`): eagerly for good, eagerly for a few more calls and then captured, or by
/// replaying the captured graph `G`.
#[derive(Debug)]
pub enum GraphState<G = CapturedGraph> {
    /// Eagerly, for good (on the CPU, with graphs off, or after a failed capture).
    Off,
    /// Eagerly, this many more calls before the capture.
    Warming(usize),
    /// By replaying the captured graph.
    Captured(G),
}

impl<G> GraphState<G> {
    /// Warming up for `warmup` calls when `wanted`, else off.
    pub fn new(wanted: bool, warmup: usize) -> Self {
        if wanted { GraphState::Warming(warmup) } else { GraphState::Off }
    }
}

/// See the module docs.
pub struct StepRunner {
    pub model: CosegNet,
    pub store: ParamStore,
    pub opt: Optimizer,
    pub watch: LossWatch,
    feed: Feed,
    graph: GraphState,
    /// Why the capture failed, when it did.
    pub graph_failure: Option<String>,
}

impl StepRunner {
    /// A runner for batches of `pairs` pairs of `size`px crops on the store's device; `cuda_graph`
    /// asks for the captured step (ignored off a GPU).
    pub fn new(model: CosegNet, store: ParamStore, opt: Optimizer, watch: LossWatch, pairs: usize, size: usize, cuda_graph: bool) -> Result<Self> {
        let device = store.device();
        let feed = Feed::new(device, pairs, size)?;
        let graph = GraphState::new(cuda_graph && device != Device::Cpu, GRAPH_WARMUP);
        Ok(StepRunner { model, store, opt, watch, feed, graph, graph_failure: None })
    }

    /// Takes every step eagerly from now on, saying `why` if a graph was asked for.
    pub fn disable_graph(&mut self, why: &str) {
        if !matches!(self.graph, GraphState::Off) {
            eprintln!("cuda graph: off, {why}");
        }
        self.graph = GraphState::Off;
    }

    /// Whether steps are now replays of a captured graph.
    pub fn captured(&self) -> bool {
        matches!(self.graph, GraphState::Captured(_))
    }

    /// One training step on `batch`.
    pub fn step(&mut self, batch: HostBatch) -> Result<()> {
        let inputs = self.feed.put(batch)?;
        match &mut self.graph {
            GraphState::Captured(g) => {
                // The replay runs the watch's launch and the optimiser's: count them here.
                self.watch.replayed()?;
                self.opt.replayed_step();
                g.replay()
            }
            GraphState::Warming(0) => self.capture(&inputs),
            GraphState::Warming(n) => {
                *n -= 1;
                step_on(&self.model, &self.store, &mut self.opt, &mut self.watch, &inputs)
            }
            GraphState::Off => step_on(&self.model, &self.store, &mut self.opt, &mut self.watch, &inputs),
        }
    }

    /// Captures the step on `inputs` and replays it (this step); on failure says why, undoes the
    /// capture's bookkeeping and takes the step eagerly.
    fn capture(&mut self, inputs: &Batch) -> Result<()> {
        let Device::Cuda(n) = self.store.device() else {
            self.graph = GraphState::Off;
            return step_on(&self.model, &self.store, &mut self.opt, &mut self.watch, inputs);
        };
        let dev = CudaDevice::get(n)?;
        let (iter, steps) = (self.watch.next_iter(), self.opt.steps_taken());
        let (model, store, opt, watch) = (&self.model, &self.store, &mut self.opt, &mut self.watch);
        match graph::capture(&dev, || step_on(model, store, opt, watch, inputs)) {
            Ok((g, ())) => {
                g.replay()?;
                self.graph = GraphState::Captured(g);
                Ok(())
            }
            Err(e) => {
                // Nothing of the capture ran: the counters go back and the step runs eagerly.
                self.watch.rewind_to(iter)?;
                self.opt.set_steps_taken(steps);
                eprintln!("cuda graph: the training step cannot be captured ({e}); training goes on eagerly");
                self.graph_failure = Some(e.to_string());
                self.graph = GraphState::Off;
                step_on(&self.model, &self.store, &mut self.opt, &mut self.watch, inputs)
            }
        }
    }
}

/// The step on inputs already on the device (what a graph captures): gradients zeroed in their
/// kept buffers, forward, the loss to the watch, backward, the optimiser step at the watch's
/// learning rate. Nothing is read back to the host on a GPU; after a non-finite loss the update
/// is skipped (on the CPU backward is too).
pub fn step_on(model: &CosegNet, store: &ParamStore, opt: &mut Optimizer, watch: &mut LossWatch, batch: &Batch) -> Result<()> {
    store.zero_grads_keeping_buffers();
    let (la, lb) = model.forward_pair(&batch.a, &batch.b, true)?;
    // The batch builder checked the labels; the watch checks the loss.
    let ce = |logits: &Tensor, target: &Tensor| logits.cross_entropy_2class_trusted(target, None);
    let loss = in_part("loss", || ce(&la, &batch.target_a)?.add(&ce(&lb, &batch.target_b)?)?.mul_scalar(0.5))?;
    drop((la, lb));
    let loss_ref = &loss; // moved in with `watch`, whose borrow the result keeps
    let source = in_part("loss watch", move || watch.record(loss_ref))?;
    if !matches!(source, StepSource::Host(None)) {
        loss.backward()?;
    }
    // The graph goes before the update: while it lives, views of the parameters (reshapes)
    // share their buffers, and the optimiser would copy each shared one (a new address every
    // step, and its table rebuilt) instead of updating it in place.
    drop(loss);
    in_part("optimizer", || match source {
        StepSource::Host(None) => Ok(()),
        StepSource::Host(Some(lr)) => opt.step(store, lr),
        StepSource::Device(scalars) => opt.step_device(store, scalars),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelConfig;
    use crate::train::optim::{OptimizerParams, poly_lr};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The runner's step (watched loss, kept gradient buffers, trusted loss, the watch's learning
    /// rate) gives the loop's old step's losses and parameters exactly on the CPU.
    #[test]
    fn the_runner_steps_as_the_old_loop_did() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let cfg = ModelConfig { depth: 18, width: 0.125, ..ModelConfig::default() };
        let (pairs, size, steps) = (2, 32, 5);
        let batches: Vec<HostBatch> = (0..steps)
            .map(|_| {
                let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-1.5f32..1.5)).collect::<Vec<f32>>();
                let (a, b) = (draw(pairs * 3 * size * size), draw(pairs * 3 * size * size));
                let mut label = |n: usize| (0..n).map(|_| rng.random_bool(0.3) as u8 as f32).collect::<Vec<f32>>();
                let (ta, tb) = (label(pairs * size * size), label(pairs * size * size));
                HostBatch::from_parts(pairs, size, [a, b, ta, tb]).unwrap()
            })
            .collect();
        let table: Vec<f32> = (0..steps).map(|i| poly_lr(0.01, i, steps, 0.9)).collect();

        let mut old_store = ParamStore::new(Device::Cpu, 7);
        let old_model = CosegNet::new(&cfg, &mut old_store).unwrap();
        let mut old_opt = Optimizer::new(OptimizerParams::paper_adam()).unwrap();
        let mut old = Vec::new();
        for (i, b) in batches.iter().enumerate() {
            let b = b.clone().upload(Device::Cpu).unwrap();
            old_store.zero_grads();
            let (la, lb) = old_model.forward_pair(&b.a, &b.b, true).unwrap();
            let loss = la.cross_entropy_2class(&b.target_a, None).unwrap().add(&lb.cross_entropy_2class(&b.target_b, None).unwrap()).unwrap().mul_scalar(0.5).unwrap();
            old.push(loss.to_scalar().unwrap());
            loss.backward().unwrap();
            old_opt.step(&old_store, table[i]).unwrap();
        }

        let mut store = ParamStore::new(Device::Cpu, 7);
        let model = CosegNet::new(&cfg, &mut store).unwrap();
        let opt = Optimizer::new(OptimizerParams::paper_adam()).unwrap();
        let watch = LossWatch::new(Device::Cpu, table.clone(), 0, 0, 2, (0.9, 0.999)).unwrap();
        let mut runner = StepRunner::new(model, store, opt, watch, pairs, size, true).unwrap();
        let mut new = Vec::new();
        for b in &batches {
            if runner.watch.full() {
                new.extend(runner.watch.drain().unwrap().losses);
            }
            runner.step(b.clone()).unwrap();
        }
        new.extend(runner.watch.drain().unwrap().losses);
        assert!(!runner.captured(), "a CPU runner captured a graph");
        assert_eq!(new, old);
        assert!(old.windows(2).any(|w| w[0] != w[1]), "the losses never moved");
        for ((name, a), (_, b)) in old_store.trainable().zip(runner.store.trainable()) {
            assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap(), "{name}");
        }
    }
}
