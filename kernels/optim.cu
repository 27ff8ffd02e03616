// Optimisers: one launch updates every parameter tensor of a model.
//
// The host uploads, once per parameter set, a table of device pointers (4 per tensor: param,
// grad, state1, state2) and lengths, plus a chunk table splitting every tensor into pieces of at
// most `chunk` elements: block b updates chunk b.
//
// The learning rate and Adam's bias corrections come one of two ways: by value from the host (an
// eager step), or, when `hyper` is not null, from device memory written by `train_monitor_f32`
// this step (`hyper` = StepScalars: lr, bc1, bc2, skip). The second needs nothing from the host per
// step, so a captured step stays valid; `skip` != 0 (a non-finite loss this step or earlier) leaves
// every parameter and its state untouched, so the parameters stay those of the last good step.

struct Chunk {
    int tensor;       // index into ptrs/lens
    long long start;  // first element of the chunk within the tensor
};

// The step's scalars in device memory (src/backend/cuda/optim.rs `StepScalars`).
struct StepScalars {
    float lr, bc1, bc2, skip;
};

// The training step's watch, one thread (src/train/monitor.rs). state = [iteration (0-based, the
// step being taken), first non-finite iteration (1-based, 0 = none), optimiser steps taken]. Reads
// this step's loss, keeps it in losses[iteration % capacity] for the host to read at its log
// interval, records the first non-finite one, and writes the scalars the optimiser kernels read:
// lr from the schedule table (lr_table[iteration], 0 past its end), Adam's bias corrections for
// step t = steps + 1, and skip. Then counts the iteration (and the optimiser step unless skipped).
extern "C" __global__ void train_monitor_f32(const float* __restrict__ loss, unsigned* __restrict__ state,
                                             float* __restrict__ losses, int capacity,
                                             const float* __restrict__ lr_table, int n_lr,
                                             StepScalars* __restrict__ out, float beta1, float beta2) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    unsigned it = state[0];
    float l = loss[0];
    losses[it % (unsigned)capacity] = l;
    if (!isfinite(l) && state[1] == 0u) state[1] = it + 1u;
    bool skip = state[1] != 0u;
    double t = (double)state[2] + 1.0;
    StepScalars s;
    s.lr = it < (unsigned)n_lr ? lr_table[it] : 0.0f;
    s.bc1 = (float)(1.0 - pow((double)beta1, t));
    s.bc2 = (float)(1.0 - pow((double)beta2, t));
    s.skip = skip ? 1.0f : 0.0f;
    *out = s;
    state[0] = it + 1u;
    if (!skip) state[2] += 1u;
}

// PyTorch SGD (dampening 0, no Nesterov): g' = g + wd p; buf = mu buf + g'; p -= lr buf.
// ptrs[4t + 0..2] = param, grad, momentum buffer (zero at the first step).
extern "C" __global__ void sgd_fwd_f32(const unsigned long long* __restrict__ ptrs,
                                       const long long* __restrict__ lens, const Chunk* __restrict__ chunks,
                                       int n_chunks, int chunk, const StepScalars* __restrict__ hyper,
                                       float lr, float momentum, float weight_decay) {
    if (hyper != nullptr) {
        if (hyper->skip != 0.0f) return;
        lr = hyper->lr;
    }
    for (int b = blockIdx.x; b < n_chunks; b += gridDim.x) {
        Chunk ch = chunks[b];
        float* p = (float*)ptrs[4 * ch.tensor + 0];
        const float* g = (const float*)ptrs[4 * ch.tensor + 1];
        float* buf = (float*)ptrs[4 * ch.tensor + 2];
        long long end = min(lens[ch.tensor], ch.start + (long long)chunk);
        for (long long i = ch.start + threadIdx.x; i < end; i += blockDim.x) {
            float gi = g[i] + weight_decay * p[i];
            float v = momentum * buf[i] + gi;
            buf[i] = v;
            p[i] -= lr * v;
        }
    }
}

// PyTorch Adam (L2 weight decay added to the gradient):
// m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2; p -= lr (m / bc1) / (sqrt(v / bc2) + eps)
// with bc1 = 1 - b1^t, bc2 = 1 - b2^t. ptrs[4t + 0..3] = param, grad, m, v.
extern "C" __global__ void adam_fwd_f32(const unsigned long long* __restrict__ ptrs,
                                        const long long* __restrict__ lens, const Chunk* __restrict__ chunks,
                                        int n_chunks, int chunk, const StepScalars* __restrict__ hyper,
                                        float lr, float beta1, float beta2, float eps, float weight_decay,
                                        float bc1, float bc2) {
    if (hyper != nullptr) {
        if (hyper->skip != 0.0f) return;
        lr = hyper->lr;
        bc1 = hyper->bc1;
        bc2 = hyper->bc2;
    }
    for (int b = blockIdx.x; b < n_chunks; b += gridDim.x) {
        Chunk ch = chunks[b];
        float* p = (float*)ptrs[4 * ch.tensor + 0];
        const float* g = (const float*)ptrs[4 * ch.tensor + 1];
        float* m = (float*)ptrs[4 * ch.tensor + 2];
        float* v = (float*)ptrs[4 * ch.tensor + 3];
        long long end = min(lens[ch.tensor], ch.start + (long long)chunk);
        for (long long i = ch.start + threadIdx.x; i < end; i += blockDim.x) {
            float gi = g[i] + weight_decay * p[i];
            float mi = beta1 * m[i] + (1.0f - beta1) * gi;
            float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        }
    }
}
