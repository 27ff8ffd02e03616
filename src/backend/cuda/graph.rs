//! CUDA graphs: a sequence of launches captured once from the device's stream and replayed with
//! one call, so the host's cost per launch (a few microseconds, about 1,300 launches in the
//! paper's training step) is paid once.
//!
//! What a capture needs of the code it records (the training step meets it): no wait for the
//! device and no copy from pageable memory (either fails the capture), every buffer it touches
//! outside its own temporaries at a fixed address (parameters, kept gradients, optimiser state,
//! the feed's fixed inputs, the loss watch), and every value that changes per step read from
//! device memory (the learning rate from the watch's table). Its temporaries come from the
//! allocator's cache and stay the graphs' (see `alloc`): run the code eagerly once or twice first
//! so the cache holds them.

use super::context::CudaDevice;
use super::error::CudaError;
use crate::error::{Error, Result};
use cudarc::driver::CudaGraph;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use std::sync::Arc;

/// A captured graph of one device's stream.
pub struct CapturedGraph {
    graph: CudaGraph,
    dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for CapturedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CapturedGraph(cuda:{})", self.dev.ordinal())
    }
}

/// Records what `body` queues on `dev`'s stream, without running it, into a graph; `body`'s
/// result comes with it. On any failure (in `body`, or the driver refusing the capture) the
/// stream leaves capture mode, nothing of it has run, and the error says why.
pub fn capture<R>(dev: &Arc<CudaDevice>, body: impl FnOnce() -> Result<R>) -> Result<(CapturedGraph, R)> {
    let stream = dev.stream().clone();
    let err = |what: &'static str| move |e| Error::from(CudaError::driver(dev.ordinal(), what, e));
    dev.pool().begin_capture();
    if let Err(e) = stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) {
        dev.pool().end_capture(false);
        return Err(err("beginning a stream capture")(e));
    }
    let out = body();
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    let made = matches!((&out, &ended), (Ok(_), Ok(Some(_))));
    dev.pool().end_capture(made);
    let r = out?;
    match ended.map_err(err("ending the stream capture (something in it is not capturable)"))? {
        Some(graph) => Ok((CapturedGraph { graph, dev: dev.clone() }, r)),
        None => Err(Error::invalid("graph capture", "the capture recorded nothing")),
    }
}

impl CapturedGraph {
    /// Queues the captured work again on the device's stream.
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().map_err(|e| CudaError::driver(self.dev.ordinal(), "replaying a captured graph", e).into())
    }
}

impl Drop for CapturedGraph {
    fn drop(&mut self) {
        self.dev.pool().graph_dropped();
    }
}
