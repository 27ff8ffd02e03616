// Reductions: sums and means over any set of axes of a 4-D (N,C,H,W) view, and softmax over an axis.
//
// Sum/mean: the output keeps the dims flagged in `keep` and has size 1 on the others. Two
// schedules, picked by the host:
//  - reduce_sum_block_f32: one block per output element, threads stride over the reduced
//    elements (coalesced when W is reduced: (N,C,1,1) outputs, global average pool, bias grads);
//  - reduce_sum_thread_f32: one thread per output element, a sequential loop over the reduced
//    elements (coalesced when W is kept: (N,1,H,W) or (1,C,H,W) outputs).
// Both write y[o] = scale * sum, so mean is scale = 1/count.

#include "block_reduce.cuh"

struct Red4 {
    int dims[4];  // input dims
    int keep[4];  // 1 = axis kept in the output, 0 = summed over
};

// Offset into the dense input of the element at output index `o` and reduced index `j`.
__device__ __forceinline__ int red_offset(const Red4& g, int o, int j) {
    int off = 0, stride = 1;
    for (int a = 3; a >= 0; --a) {
        int d = g.dims[a];
        int coord;
        if (g.keep[a]) { coord = o % d; o /= d; }
        else           { coord = j % d; j /= d; }
        off += coord * stride;
        stride *= d;
    }
    return off;
}

// gridDim.y splits the reduced elements into chunks of `chunk`, so that a few outputs with long
// reductions (a bias gradient over N*H*W) still fill the card; split z writes its partial sums to
// y[z * n_out + o] (y is then a (splits, n_out) buffer) and sum_splits_f32 adds them in order: no
// atomics, the same bits every run.
extern "C" __global__ void reduce_sum_block_f32(const float* __restrict__ x, float* __restrict__ y,
                                                int n_out, int n_red, Red4 g, float scale, int chunk) {
    const int j0 = blockIdx.y * chunk, j1 = min(n_red, j0 + chunk);
    for (int o = blockIdx.x; o < n_out; o += gridDim.x) {
        float acc = 0.0f;
        for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) acc += x[red_offset(g, o, j)];
        acc = block_sum(acc);
        if (threadIdx.x == 0) y[(long long)blockIdx.y * n_out + o] = acc * scale;
    }
}

extern "C" __global__ void reduce_sum_thread_f32(const float* __restrict__ x, float* __restrict__ y,
                                                 int n_out, int n_red, Red4 g, float scale, int chunk) {
    const int j0 = blockIdx.y * chunk, j1 = min(n_red, j0 + chunk);
    for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < n_out; o += blockDim.x * gridDim.x) {
        float acc = 0.0f;
        for (int j = j0; j < j1; ++j) acc += x[red_offset(g, o, j)];
        y[(long long)blockIdx.y * n_out + o] = acc * scale;
    }
}

// out[i] = sum over z = 0 .. splits-1, in that order, of parts[z * len + i]: the second pass of a
// reduction split over blocks (the sums above, the convolutions' weight gradient), deterministic
// where atomics would add in whatever order the blocks finish.
extern "C" __global__ void sum_splits_f32(const float* __restrict__ parts, float* __restrict__ out, int splits, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        float acc = parts[i];
        for (int z = 1; z < splits; ++z) acc += parts[(long long)z * len + i];
        out[i] = acc;
    }
}

// ---- softmax over the middle axis of an (outer, dim, inner) view ----
// One thread per (outer, inner) pair: coalesced along inner (softmax over channels of NCHW).
extern "C" __global__ void softmax_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                           int outer, int dim, int inner) {
    int total = outer * inner;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += blockDim.x * gridDim.x) {
        int base = (t / inner) * dim * inner + t % inner;
        float m = NEG_INF;
        for (int k = 0; k < dim; ++k) m = fmaxf(m, x[base + k * inner]);
        float s = 0.0f;
        for (int k = 0; k < dim; ++k) s += expf(x[base + k * inner] - m);
        float inv = 1.0f / s;
        for (int k = 0; k < dim; ++k) y[base + k * inner] = expf(x[base + k * inner] - m) * inv;
    }
}

// dx = y * (dy - sum_k dy_k y_k), from the forward's output y.
extern "C" __global__ void softmax_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy,
                                           float* __restrict__ dx, int outer, int dim, int inner) {
    int total = outer * inner;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += blockDim.x * gridDim.x) {
        int base = (t / inner) * dim * inner + t % inner;
        float dot = 0.0f;
        for (int k = 0; k < dim; ++k) dot += dy[base + k * inner] * y[base + k * inner];
        for (int k = 0; k < dim; ++k) {
            int i = base + k * inner;
            dx[i] = y[i] * (dy[i] - dot);
        }
    }
}

// Softmax over contiguous rows (inner == 1, e.g. attention maps): one block per row.
extern "C" __global__ void softmax_rows_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                                int rows, int dim) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (long long)r * dim;
        float* yr = y + (long long)r * dim;
        float m = NEG_INF;
        for (int k = threadIdx.x; k < dim; k += blockDim.x) m = fmaxf(m, xr[k]);
        m = block_max(m);
        float s = 0.0f;
        for (int k = threadIdx.x; k < dim; k += blockDim.x) s += expf(xr[k] - m);
        float inv = 1.0f / block_sum(s);
        for (int k = threadIdx.x; k < dim; k += blockDim.x) yr[k] = expf(xr[k] - m) * inv;
    }
}

extern "C" __global__ void softmax_rows_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy,
                                                float* __restrict__ dx, int rows, int dim) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        long long base = (long long)r * dim;
        float dot = 0.0f;
        for (int k = threadIdx.x; k < dim; k += blockDim.x) dot += dy[base + k] * y[base + k];
        dot = block_sum(dot);
        for (int k = threadIdx.x; k < dim; k += blockDim.x) dx[base + k] = y[base + k] * (dy[base + k] - dot);
    }
}
