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
    inputs: Vec<Tensor>,
    backward: BackwardFn,
}

impl Node {
    pub(crate) fn new(op: &'static str, inputs: Vec<Tensor>, backward: BackwardFn) -> Node {
        Node {
            op,
            inputs,
            backward,
        }
    }
    pub fn op(&self) -> &'static str {
        self.op
    }
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
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
