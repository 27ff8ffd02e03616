//! Reverse-mode automatic differentiation.
//!
//! Every op that has an input taking part in the graph (a variable, or the result of a recorded
//! op) stores a [`Node`] in its output: the op's name, its inputs, and a closure that maps the
//! output's gradient to the inputs' gradients. [`Tensor::backward`] walks those nodes from a
//! scalar loss in reverse topological order, sums the gradients that reach each tensor, and adds
//! the total into each variable's `grad()` (accumulating across calls, as PyTorch does, until
//! `zero_grad`). Backward closures run with recording off and are written with the same
//! device-dispatched ops as the forward pass, so they run wherever the data lives.
//!
//! Inference records nothing: wrap it in [`no_grad`] (or hold a [`NoGradGuard`]). The switch is
//! per thread; ops parallelise internally but record on the calling thread.
//!
//! Model parts, for the per-op GPU profile: a module's forward runs inside [`in_part`] (the
//! encoder's stages, the attention, the decoder, the loss, the optimiser), every node recorded
//! there keeps the part's name, and [`Tensor::backward`] runs each node's backward in its part's
//! backward. [`current_part`] is what the profiler files each launch under, so its table says
//! which part of the model, forward or backward, the time went to (`backend::cuda::profile`).

mod params;

pub use params::{Init, LoadReport, ParamStore};
pub(crate) use params::read_view;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

type BackwardFn = Box<dyn Fn(&Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// The record of one op application in the graph.
pub struct Node {
    op: &'static str,
    /// The model part the op was recorded in ([`in_part`]), where its backward is filed.
    part: Option<&'static str>,
    inputs: Vec<Tensor>,
    backward: BackwardFn,
}

impl Node {
    pub(crate) fn new(op: &'static str, inputs: Vec<Tensor>, backward: BackwardFn) -> Node {
        Node {
            op,
            part: current_part().name,
            inputs,
            backward,
        }
    }
    pub fn op(&self) -> &'static str {
        self.op
    }
    /// The model part the op was recorded in, if any ([`in_part`]).
    pub fn part(&self) -> Option<&'static str> {
        self.part
    }
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static PART: Cell<Part> = const { Cell::new(Part { name: None, backward: false }) };
}

/// What the work running on this thread now belongs to: a model part (None outside every
/// [`in_part`]) and whether it is that part's backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Part {
    pub name: Option<&'static str>,
    pub backward: bool,
}

impl std::fmt::Display for Part {
    /// "decoder", "decoder backward"; "(outside the model parts)" where no part is set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name.unwrap_or("(outside the model parts)"))?;
        if self.backward { f.write_str(" backward") } else { Ok(()) }
    }
}

/// The part the work on this thread belongs to now.
pub fn current_part() -> Part {
    PART.with(|p| p.get())
}

/// Sets the part the work on this thread belongs to until dropped (restores the previous one).
struct PartGuard {
    previous: Part,
}

impl PartGuard {
    fn set(part: Part) -> PartGuard {
        PartGuard { previous: PART.with(|p| p.replace(part)) }
    }
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        PART.with(|p| p.set(self.previous));
    }
}

/// Runs `f` (a model part's forward, or work outside autograd such as the optimiser's step) as
/// part `name`: its launches are profiled under it, and the nodes it records keep it for their
/// backward. An inner part replaces an outer one until it returns.
pub fn in_part<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    let _part = PartGuard::set(Part { name: Some(name), backward: false });
    f()
}

/// Whether ops on this thread record the graph now.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Turns recording off on this thread until dropped (restores the previous state).
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    #[allow(clippy::new_without_default)]
    pub fn new() -> NoGradGuard {
        let previous = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { previous }
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Runs `f` with recording off: forward passes for inference, evaluation, optimiser steps.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

impl Tensor {
    /// Back-propagates from this scalar (one-element) tensor: adds d(self)/d(v) into `v.grad()`
    /// for every variable `v` it depends on.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("backward needs a scalar loss, got shape {}", self.shape()),
            ));
        }
        if !self.tracks_grad() {
            return Err(Error::invalid(
                "backward",
                "the loss depends on no variable (was it computed under no_grad, or from detached tensors?)",
            ));
        }
        let _guard = NoGradGuard::new();
        // Work between nodes (the leaves' accumulation) is backward work of no part.
        let _part = PartGuard::set(Part { name: None, backward: true });
        let order = topological_order(self);
        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        grads.insert(
            self.id(),
            Tensor::ones(self.shape().clone(), self.device())?,
        );
        for t in order.iter().rev() {
            let Some(grad) = grads.remove(&t.id()) else {
                continue;
            };
            if let Some(node) = t.node() {
                let _node_part = PartGuard::set(Part { name: node.part, backward: true });
                let input_grads = (node.backward)(&grad, t)?;
                if input_grads.len() != node.inputs.len() {
                    return Err(Error::invalid(
                        node.op,
                        format!(
                            "backward gave {} gradients for {} inputs",
                            input_grads.len(),
                            node.inputs.len()
                        ),
                    ));
                }
                for (input, g) in node.inputs.iter().zip(input_grads) {
                    let Some(g) = g else { continue };
                    if !input.tracks_grad() {
                        continue;
                    }
                    if g.shape() != input.shape() {
                        return Err(Error::shape(
                            node.op,
                            format!(
                                "backward gave a gradient of shape {} for an input of shape {}",
                                g.shape(),
                                input.shape()
                            ),
                        ));
                    }
                    let total = match grads.remove(&input.id()) {
                        Some(acc) => acc.add(&g)?,
                        None => g,
                    };
                    grads.insert(input.id(), total);
                }
            } else if t.requires_grad() {
                t.accumulate_grad(grad)?;
            }
        }
        Ok(())
    }
}

/// Tensors reachable from `root` through recorded nodes, each after all of its inputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut visited = HashSet::new();
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, inputs_done)) = stack.pop() {
        if inputs_done {
            order.push(t);
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(node) = t.node() {
            for input in &node.inputs {
                if input.tracks_grad() && !visited.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::tensor::Storage;
    use std::sync::{Arc, Mutex};

    /// `x` through an op whose backward notes the part it runs in (and passes the gradient on).
    fn noting(x: &Tensor, seen: &Arc<Mutex<Vec<Part>>>) -> Tensor {
        let seen = Arc::clone(seen);
        let storage = Arc::new(Storage::Cpu(x.to_vec().unwrap()));
        Tensor::from_storage_op("noting", storage, x.shape().clone(), &[x], move |g, _| {
            seen.lock().unwrap().push(current_part());
            Ok(vec![Some(g.clone())])
        })
    }

    #[test]
    fn nodes_keep_their_part_and_run_their_backward_in_it() {
        let w = Tensor::from_vec(vec![0.5, -1.5, 2.0], [3], Device::Cpu).unwrap().into_var();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let a = in_part("encoder", || {
            assert_eq!(current_part(), Part { name: Some("encoder"), backward: false });
            let inner = in_part("encoder.layer1", || noting(&w, &seen));
            assert_eq!(current_part().name, Some("encoder"), "an inner part ends with its call");
            noting(&inner, &seen)
        });
        assert_eq!(current_part(), Part::default(), "no part after the outer call");
        let out = noting(&a, &seen).sum_all().unwrap();
        assert_eq!(a.node().unwrap().part(), Some("encoder"));
        assert_eq!(out.node().unwrap().part(), None);
        out.backward().unwrap();
        // Reverse order: the outside op, then the encoder's, then the inner part's.
        let want = [None, Some("encoder"), Some("encoder.layer1")].map(|name| Part { name, backward: true });
        assert_eq!(*seen.lock().unwrap(), want);
        assert_eq!(current_part(), Part::default(), "backward restores the part");
        assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![1.0; 3]);
        assert_eq!(want[1].to_string(), "encoder backward");
        assert_eq!(Part::default().to_string(), "(outside the model parts)");
    }
}
