// Elementwise kernels: unary activations, scalar ops, fills, and binary ops with broadcasting.
//
// Every kernel walks its elements with a grid-stride loop, so any grid size is correct; the host
// picks one from the element count. Sizes are int: the host refuses tensors of 2^31 elements or more.
//
// Broadcasting: the output is a 4-D (N,C,H,W) view; each input is read through its own strides,
// with stride 0 on a broadcast axis (e.g. (N,C,1,1) or (N,1,H,W) against (N,C,H,W)).

struct Bcast4 {
    int dims[4];  // output dims
    int sa[4];    // strides of a, 0 where a is broadcast
    int sb[4];    // strides of b, 0 where b is broadcast
};

__device__ __forceinline__ void bcast_offsets(const Bcast4& g, int i, int& ia, int& ib) {
    int w = i % g.dims[3];
    int t = i / g.dims[3];
    int h = t % g.dims[2];
    t /= g.dims[2];
    int c = t % g.dims[1];
    int n = t / g.dims[1];
    ia = n * g.sa[0] + c * g.sa[1] + h * g.sa[2] + w * g.sa[3];
    ib = n * g.sb[0] + c * g.sb[1] + h * g.sb[2] + w * g.sb[3];
}

#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

// ---- binary forward: y = a op b, broadcast ----
#define BINARY_FWD(name, expr)                                                                  \
    extern "C" __global__ void name(const float* __restrict__ a, const float* __restrict__ b,   \
                                    float* __restrict__ y, int n, Bcast4 g) {                   \
        GRID_STRIDE(i, n) {                                                                     \
            int ia, ib;                                                                         \
            bcast_offsets(g, i, ia, ib);                                                        \
            float x = a[ia], z = b[ib];                                                         \
            y[i] = (expr);                                                                      \
        }                                                                                       \
    }
BINARY_FWD(add_fwd_f32, x + z)
BINARY_FWD(sub_fwd_f32, x - z)
BINARY_FWD(mul_fwd_f32, x * z)
BINARY_FWD(div_fwd_f32, x / z)

// ---- binary backward: the full-size gradient for one side; the host then sums it over the
// broadcast axes (reduce.cu) when that side was broadcast. add/sub need no kernel (dy, -dy).
// mul: da = dy * b, db = dy * a  -> one kernel "dy times the other operand".
extern "C" __global__ void mul_bwd_f32(const float* __restrict__ dy, const float* __restrict__ other,
                                       float* __restrict__ d, int n, Bcast4 g) {
    // g.sa: strides of dy (dense), g.sb: strides of the other operand
    GRID_STRIDE(i, n) {
        int idy, io;
        bcast_offsets(g, i, idy, io);
        d[i] = dy[idy] * other[io];
    }
}
// div: da = dy / b
extern "C" __global__ void div_bwd_a_f32(const float* __restrict__ dy, const float* __restrict__ b,
                                         float* __restrict__ d, int n, Bcast4 g) {
    GRID_STRIDE(i, n) {
        int idy, ib;
        bcast_offsets(g, i, idy, ib);
        d[i] = dy[idy] / b[ib];
    }
}
// div: db = -dy * a / b^2, with a and b both read through broadcast strides (sa, sb) and dy dense.
extern "C" __global__ void div_bwd_b_f32(const float* __restrict__ dy, const float* __restrict__ a,
                                         const float* __restrict__ b, float* __restrict__ d, int n, Bcast4 g) {
    GRID_STRIDE(i, n) {
        int ia, ib;
        bcast_offsets(g, i, ia, ib);
        float bv = b[ib];
        d[i] = -dy[i] * a[ia] / (bv * bv);
    }
}

// ---- unary activations ----
extern "C" __global__ void relu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    GRID_STRIDE(i, n) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
}
// Gradient passes where the input was positive (PyTorch: relu'(0) = 0).
extern "C" __global__ void relu_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                        float* __restrict__ dx, int n) {
    GRID_STRIDE(i, n) { dx[i] = x[i] > 0.0f ? dy[i] : 0.0f; }
}
extern "C" __global__ void sigmoid_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    GRID_STRIDE(i, n) { y[i] = 1.0f / (1.0f + expf(-x[i])); }
}
// Backward from the forward's output y: dx = dy * y * (1 - y).
extern "C" __global__ void sigmoid_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy,
                                           float* __restrict__ dx, int n) {
    GRID_STRIDE(i, n) { dx[i] = dy[i] * y[i] * (1.0f - y[i]); }
}
extern "C" __global__ void tanh_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    GRID_STRIDE(i, n) { y[i] = tanhf(x[i]); }
}
// Backward from the forward's output y: dx = dy * (1 - y^2).
extern "C" __global__ void tanh_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy,
                                        float* __restrict__ dx, int n) {
    GRID_STRIDE(i, n) { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }
}

// ---- scalar ops: y = alpha * x + beta covers add/sub/mul/div by a scalar and negation;
// its backward is the same kernel with (alpha, 0).
extern "C" __global__ void affine_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n,
                                          float alpha, float beta) {
    GRID_STRIDE(i, n) { y[i] = fmaf(alpha, x[i], beta); }
}
// y += alpha * x (gradient accumulation).
extern "C" __global__ void axpy_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n, float alpha) {
    GRID_STRIDE(i, n) { y[i] = fmaf(alpha, x[i], y[i]); }
}
extern "C" __global__ void fill_fwd_f32(float* __restrict__ y, int n, float value) {
    GRID_STRIDE(i, n) { y[i] = value; }
}
