//! Tensors: f32 data on a device, with a shape, and (when gradients are tracked) the op that made
//! them.
//!
//! # Layout: NCHW, contiguous, row-major
//! Activations are `(N, C, H, W)` with W contiguous, and weights `(K, C, R, S)`. This is PyTorch's
//! and torchvision's layout (pretrained weights load without transposes) and cuDNN's default. The
//! GPU kernels treat a convolution as an implicit GEMM with M = N*OH*OW, N = K and the reduction
//! over C*R*S: consecutive threads take consecutive output columns `ow`, so loads of the input
//! rows and stores of the output are coalesced along W; the weight tile for a block of K is shared
//! by all of them. On the CPU the same layout makes each image's channel plane a contiguous
//! matrix, so a 1x1 convolution is one GEMM per image and im2col reads rows of W.
//!
//! Every tensor is contiguous: ops that change the layout (`permute`, `transpose`, `narrow`) copy.
//! That keeps every kernel a loop over plain slices and costs little next to the convolutions.
//!
//! # Sharing and mutation
//! `Tensor` is a cheap handle (`Arc`). The numbers sit behind an `Arc<Storage>` so `reshape` and
//! `detach` share them without copying. The only mutations are [`Tensor::assign`] and
//! [`Tensor::update`] (optimiser steps, batch-norm running statistics); they replace or write the
//! storage of that one tensor and copy first if a recorded graph still holds the old numbers.

mod shape;
mod storage;

pub use shape::Shape;
pub use storage::Storage;
pub(crate) use storage::needs_cuda;

use crate::autograd::{self, Node};
use crate::device::Device;
use crate::error::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A handle to an f32 tensor. Cloning is cheap and shares data, graph and gradient.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    id: usize,
    shape: Shape,
    device: Device,
    storage: RwLock<Arc<Storage>>,
    /// A leaf whose gradient `backward` stores (a parameter).
    requires_grad: bool,
    /// The op that produced this tensor, when it was recorded.
    node: Option<Node>,
    grad: Mutex<GradSlot>,
}

/// A copy of a storage something else shares, for an in-place write that must not reach the
/// sharer. Refused while a graph is captured on its device: the copy would land in a block of the
/// graph's, and the tensor would then live where every replay writes.
fn unshared_copy(storage: &Storage) -> Result<Storage> {
    Ok(match storage {
        Storage::Cpu(v) => Storage::Cpu(v.clone()),
        Storage::Cuda(b) => {
            let dev = crate::backend::cuda::CudaDevice::get(b.ordinal())?;
            if dev.capturing() {
                return Err(Error::invalid(
                    "graph capture",
                    "an in-place update found its buffer shared (a view still alive) and would move it into the graph's memory",
                ));
            }
            Storage::Cuda(dev.dtod(b)?)
        }
    })
}

/// A leaf's gradient, and the buffer of an earlier one kept for the next (see
/// [`Tensor::zero_grad_keeping_buffer`]).
#[derive(Default)]
struct GradSlot {
    current: Option<Tensor>,
    spare: Option<Tensor>,
}

fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Tensor {
    fn build(
        storage: Arc<Storage>,
        shape: Shape,
        requires_grad: bool,
        node: Option<Node>,
    ) -> Tensor {
        Tensor(Arc::new(Inner {
            id: next_id(),
            device: storage.device(),
            shape,
            storage: RwLock::new(storage),
            requires_grad,
            node,
            grad: Mutex::new(GradSlot::default()),
        }))
    }

    /// A tensor holding `data` (row-major) with `shape`, on `device`.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape(
                "from_vec",
                format!(
                    "{} values given for shape {shape} ({} elements)",
                    data.len(),
                    shape.numel()
                ),
            ));
        }
        Ok(Tensor::build(
            Arc::new(Storage::from_host(data, device)?),
            shape,
            false,
            None,
        ))
    }
    /// A rank-0 tensor.
    pub fn scalar(value: f32, device: Device) -> Result<Tensor> {
        Tensor::from_vec(vec![value], Shape::from(()), device)
    }
    /// Every element `value`. On a GPU the buffer is filled there (a launch, no copy from the
    /// host: backward's seed gradient is made this way every step).
    pub fn full(shape: impl Into<Shape>, value: f32, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        match device {
            Device::Cpu => Tensor::from_vec(vec![value; shape.numel()], shape, device),
            Device::Cuda(n) => {
                let dev = crate::backend::cuda::CudaDevice::get(n)?;
                let mut buf = dev.alloc(shape.numel())?;
                crate::backend::cuda::elementwise::fill(&dev, &mut buf, value)?;
                Ok(Tensor::build(Arc::new(Storage::Cuda(buf)), shape, false, None))
            }
        }
    }
    pub fn zeros(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, device)
    }
    pub fn ones(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, device)
    }
    /// Normal(mean, std) samples drawn from `rng` (seed it for reproducible runs).
    pub fn randn(shape: impl Into<Shape>, mean: f32, std: f32, device: Device, rng: &mut impl Rng) -> Result<Tensor> {
        let dist = Normal::new(mean, std)
            .map_err(|e| Error::invalid("randn", format!("mean {mean}, std {std}: {e}")))?;
        Tensor::sampled(shape.into(), dist, device, rng)
    }
    /// Uniform samples in [lo, hi) drawn from `rng`.
    pub fn uniform(shape: impl Into<Shape>, lo: f32, hi: f32, device: Device, rng: &mut impl Rng) -> Result<Tensor> {
        let dist = Uniform::new(lo, hi)
            .map_err(|e| Error::invalid("uniform", format!("[{lo}, {hi}): {e}")))?;
        Tensor::sampled(shape.into(), dist, device, rng)
    }
    /// `shape`'s element count of samples of `dist`, drawn from `rng` in row-major order.
    fn sampled(shape: Shape, dist: impl Distribution<f32>, device: Device, rng: &mut impl Rng) -> Result<Tensor> {
        let data = (0..shape.numel()).map(|_| dist.sample(rng)).collect();
        Tensor::from_vec(data, shape, device)
    }

    /// A tensor over storage an op produced, outside the graph.
    pub(crate) fn from_storage(storage: Storage, shape: Shape) -> Tensor {
        Tensor::build(Arc::new(storage), shape, false, None)
    }

    /// The result of an op: records `backward` in the graph when gradients are enabled and an
    /// input takes part in it. `backward(grad_out, out)` returns one gradient per input (None
    /// where an input needs none); it runs with recording off.
    pub(crate) fn from_storage_op(
        op: &'static str,
        storage: Arc<Storage>,
        shape: Shape,
        inputs: &[&Tensor],
        backward: impl Fn(&Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Tensor {
        let node = if autograd::is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad()) {
            Some(Node::new(
                op,
                inputs.iter().map(|t| (*t).clone()).collect(),
                Box::new(backward),
            ))
        } else {
            None
        };
        Tensor::build(storage, shape, false, node)
    }

    /// [`Self::from_storage_op`] for an op of one input whose gradient `backward(grad_out, out)`
    /// always computes.
    pub(crate) fn from_storage_unary(
        op: &'static str,
        storage: Storage,
        shape: Shape,
        input: &Tensor,
        backward: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Tensor {
        Tensor::from_storage_op(op, Arc::new(storage), shape, &[input], move |g, y| Ok(vec![Some(backward(g, y)?)]))
    }

    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }
    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    /// A process-unique id (graph bookkeeping, debugging).
    pub fn id(&self) -> usize {
        self.0.id
    }
    /// The current storage (shared, cheap).
    pub fn storage(&self) -> Arc<Storage> {
        self.0
            .storage
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// The data copied to the host, row-major.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.storage().to_host()
    }
    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("tensor of shape {} is not a single value", self.shape()),
            ));
        }
        Ok(self.to_vec()?[0])
    }
    /// A copy on `device` (the same handle when already there). Not recorded in the graph.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let data = self.to_vec()?;
        Tensor::from_vec(data, self.shape().clone(), device)
    }

    /// The same numbers, cut from the graph: nothing flows back through the result.
    pub fn detach(&self) -> Tensor {
        Tensor::build(self.storage(), self.shape().clone(), false, None)
    }
    /// A leaf sharing these numbers whose gradient `backward` will store (a trainable parameter).
    pub fn into_var(self) -> Tensor {
        Tensor::build(self.storage(), self.shape().clone(), true, None)
    }
    /// Whether this is a leaf that collects a gradient.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    /// Whether gradients flow through this tensor (a variable or the result of a recorded op).
    pub fn tracks_grad(&self) -> bool {
        self.0.requires_grad || self.0.node.is_some()
    }
    pub(crate) fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }
    /// The gradient accumulated by `backward` calls since the last `zero_grad` (variables only).
    pub fn grad(&self) -> Option<Tensor> {
        self.grad_slot().current.clone()
    }
    fn grad_slot(&self) -> std::sync::MutexGuard<'_, GradSlot> {
        self.0.grad.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Forgets the gradient (and any kept buffer).
    pub fn zero_grad(&self) {
        *self.grad_slot() = GradSlot::default();
    }
    /// Forgets the gradient but keeps its buffer: the next `backward` writes its gradient into
    /// it (same shape and device) instead of keeping a new one, so a training step's gradients
    /// live at the same device addresses every step (the optimiser's table is built once, and a
    /// captured step stays valid). Until then `grad()` is None, as after `zero_grad`.
    pub fn zero_grad_keeping_buffer(&self) {
        let mut slot = self.grad_slot();
        if let Some(g) = slot.current.take() {
            slot.spare = Some(g);
        }
    }
    /// Adds `g` into this leaf's gradient: the first gradient since the last zeroing is copied
    /// into the kept buffer when one fits, else kept as it is.
    pub(crate) fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let (current, spare) = {
            let mut slot = self.grad_slot();
            (slot.current.take(), slot.spare.take())
        };
        let total = match (current, spare) {
            (Some(old), _) => old.add(&g)?,
            (None, Some(buf)) if buf.shape() == g.shape() && buf.device() == g.device() => {
                buf.copy_from(&g)?;
                buf
            }
            (None, _) => g,
        };
        self.grad_slot().current = Some(total);
        Ok(())
    }
    /// Replaces the numbers with a copy of `src`'s (same shape and device) in this tensor's own
    /// buffer, outside the graph: the address stays (unless the buffer is shared, then it is
    /// copied first, as `update` does).
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() || src.device() != self.device() {
            return Err(Error::shape(
                "copy_from",
                format!("cannot copy {} on {} into {} on {}", src.shape(), src.device(), self.shape(), self.device()),
            ));
        }
        let from = src.storage();
        self.update_storage(|to| match (to, &*from) {
            (Storage::Cpu(to), Storage::Cpu(from)) => {
                to.copy_from_slice(from);
                Ok(())
            }
            (Storage::Cuda(to), Storage::Cuda(from)) => crate::backend::cuda::CudaDevice::get(to.ordinal())?.copy_into(from, to),
            _ => Err(Error::DeviceMismatch { op: "copy_from", first: src.device(), second: self.device() }),
        })
    }

    /// Replaces the numbers with those of `src` (same shape and device), outside the graph.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() || src.device() != self.device() {
            return Err(Error::shape(
                "assign",
                format!(
                    "cannot assign {} on {} to {} on {}",
                    src.shape(),
                    src.device(),
                    self.shape(),
                    self.device()
                ),
            ));
        }
        *self.0.storage.write().unwrap_or_else(|p| p.into_inner()) = src.storage();
        Ok(())
    }
    /// Writes the numbers in place on the host (optimiser steps, running statistics); copies
    /// first when a recorded graph or a view still shares them, so those keep the old values.
    pub fn update(&self, op: &'static str, f: impl FnOnce(&mut [f32])) -> Result<()> {
        let mut guard = self.0.storage.write().unwrap_or_else(|p| p.into_inner());
        if Arc::get_mut(&mut guard).is_none() {
            let copy = Storage::from_host(guard.to_host()?, self.device())?;
            *guard = Arc::new(copy);
        }
        let storage = Arc::get_mut(&mut guard).expect("storage was made unique above");
        f(storage.as_cpu_mut(op)?);
        Ok(())
    }
    /// Writes the numbers of several distinct tensors in place at once (`f` gets their storages,
    /// in order): a one-launch optimiser step over every parameter on the GPU. Each is copied
    /// first when shared, as in `update`.
    pub fn update_storages<R>(
        tensors: &[&Tensor],
        f: impl FnOnce(Vec<&mut Storage>) -> Result<R>,
    ) -> Result<R> {
        let mut ids: Vec<usize> = tensors.iter().map(|t| t.id()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                "update_storages",
                "the same tensor is given twice",
            ));
        }
        let mut guards: Vec<_> = tensors
            .iter()
            .map(|t| t.0.storage.write().unwrap_or_else(|p| p.into_inner()))
            .collect();
        for guard in guards.iter_mut() {
            if Arc::get_mut(guard).is_none() {
                **guard = Arc::new(unshared_copy(guard)?);
            }
        }
        f(guards
            .iter_mut()
            .map(|g| Arc::get_mut(g).expect("storage was made unique above"))
            .collect())
    }
    /// Writes the numbers in place on the device they live on (`f` gets the storage itself: the
    /// CUDA path of running statistics and optimiser steps); copies first when shared, as `update`.
    pub fn update_storage(&self, f: impl FnOnce(&mut Storage) -> Result<()>) -> Result<()> {
        let mut guard = self.0.storage.write().unwrap_or_else(|p| p.into_inner());
        if Arc::get_mut(&mut guard).is_none() {
            *guard = Arc::new(unshared_copy(&guard)?);
        }
        f(Arc::get_mut(&mut guard).expect("storage was made unique above"))
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: Vec<f32> = self
            .to_vec()
            .map(|v| v.into_iter().take(8).collect())
            .unwrap_or_default();
        write!(
            f,
            "Tensor(shape={}, device={}, head={head:?}",
            self.shape(),
            self.device()
        )?;
        if let Some(node) = self.node() {
            write!(f, ", op={}", node.op())?;
        }
        if self.requires_grad() {
            write!(f, ", var")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construct_and_errors() {
        let t = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let e = Tensor::from_vec(vec![1.0; 5], [2, 3], Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("5 values") && e.contains("[2, 3]"), "{e}");
        // CUDA: works where a GPU is, and is a Device error (never a panic) where none is.
        match Tensor::zeros([2], Device::Cuda(0)) {
            Ok(z) => assert_eq!(z.to_vec().unwrap(), vec![0.0, 0.0]),
            Err(e) => assert!(e.to_string().starts_with("device: "), "{e}"),
        }
        assert!(t.to_device(Device::Cuda(4096)).is_err());
    }

    #[test]
    fn update_copies_when_shared() {
        let t = Tensor::from_vec(vec![1.0, 2.0], [2], Device::Cpu).unwrap();
        let view = t.detach();
        t.update("test", |d| d[0] = 7.0).unwrap();
        assert_eq!(t.to_vec().unwrap(), vec![7.0, 2.0]);
        assert_eq!(view.to_vec().unwrap(), vec![1.0, 2.0]);
    }
}
