// Any-rank kernels behind the tensor ops: element-wise maps picked by an op code (forward and
// backward), broadcast binary ops, and strided copies (broadcast_to, permute, narrow, concat),
// with a tiled kernel for the copies that transpose.
//
// Shapes reach these kernels already simplified by the host (ops::Walk): size-1 dims dropped and
// dims merged wherever every operand is contiguous across them, so MAX_DIMS = 6 covers any
// broadcast the foundation makes. The output index i runs row-major over `dims`; each operand is
// read (or written) at its base offset plus the dot product of i's coordinates with its strides
// (stride 0 = broadcast). Sizes are int: the host refuses 2^31 elements or more.

#define MAX_DIMS 6
#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

struct StridedN {
    int rank;
    int dims[MAX_DIMS];
    int sx[MAX_DIMS];  // strides of the first operand
    int sy[MAX_DIMS];  // strides of the second operand
    int ox, oy;        // base offsets
};

__device__ __forceinline__ void nd_offsets(const StridedN& g, int i, int& ix, int& iy) {
    ix = g.ox;
    iy = g.oy;
    for (int d = g.rank - 1; d >= 0; --d) {
        int c = i % g.dims[d];
        i /= g.dims[d];
        ix += c * g.sx[d];
        iy += c * g.sy[d];
    }
}

// ---- binary ops with broadcasting: y[i] = a[sx] op b[sy]; y dense ----
// Op codes (the values of ops::elementwise::BinaryOp): 0 add, 1 sub, 2 mul, 3 div.
extern "C" __global__ void binary_nd_fwd_f32(const float* __restrict__ a, const float* __restrict__ b,
                                             float* __restrict__ y, int n, int op, StridedN g) {
    GRID_STRIDE(i, n) {
        int ia, ib;
        nd_offsets(g, i, ia, ib);
        float x = a[ia], z = b[ib];
        float r;
        switch (op) {
            case 0: r = x + z; break;
            case 1: r = x - z; break;
            case 2: r = x * z; break;
            default: r = x / z; break;
        }
        y[i] = r;
    }
}

// ---- strided copy: y[oy + sy.i] = x[ox + sx.i] ----
extern "C" __global__ void copy_nd_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n, StridedN g) {
    GRID_STRIDE(i, n) {
        int ix, iy;
        nd_offsets(g, i, ix, iy);
        y[iy] = x[ix];
    }
}

// ---- batched 2-D transpose, the copy_nd walks that swap a matrix's axes (backend::cuda::nd::copy
// picks it): y[oy + (b*C + c)*R + r] = x[ox + (b*R + r)*C + c] for x (B, R, C) and y (B, C, R).
// copy_nd reads such a walk with a stride of R floats between neighbouring threads, a 32-byte
// sector for each float read (the convolutions' weight reorders, 3 ms of the bf16 step on the
// H200); here a block moves a 32 x 32 tile through shared memory, reading rows of x and writing
// rows of y, both coalesced. Grid (ceil(C/32), ceil(R/32), B), 256 threads as 8 rows of 32.
extern "C" __global__ void transpose_f32(const float* __restrict__ x, float* __restrict__ y, int R, int C, int ox,
                                         int oy) {
    __shared__ float tile[32][33];  // 33: a column of the tile hits 32 banks
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, r0 = blockIdx.y * 32, c0 = blockIdx.x * 32;
    const long long base = (long long)blockIdx.z * R * C;
    x += ox + base;
    y += oy + base;
    for (int i = ty; i < 32; i += 8) {
        const int r = r0 + i, c = c0 + tx;
        if (r < R && c < C) tile[i][tx] = x[(long long)r * C + c];
    }
    __syncthreads();
    for (int i = ty; i < 32; i += 8) {
        const int c = c0 + i, r = r0 + tx;
        if (c < C && r < R) y[(long long)c * R + r] = tile[tx][i];
    }
}

// ---- unary maps; the same formulas as the CPU ops (ops::elementwise), p and q their constants ----
// Op codes (backend::cuda::nd::MapOp): 0 relu, 1 sigmoid, 2 tanh, 3 exp, 4 log, 5 sqrt, 6 sqr,
// 7 abs, 8 clamp [p, q], 9 pow p.
__device__ __forceinline__ float map_one(int op, float x, float p, float q) {
    switch (op) {
        case 0: return x <= 0.0f ? 0.0f : x;  // NaN passes through, as on the CPU
        case 1: {
            // Stable on both sides: exp never overflows.
            if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
            float e = expf(x);
            return e / (1.0f + e);
        }
        case 2: return tanhf(x);
        case 3: return expf(x);
        case 4: return logf(x);
        case 5: return sqrtf(x);
        case 6: return x * x;
        case 7: return fabsf(x);
        case 8: return x < p ? p : (x > q ? q : x);
        default: return powf(x, p);
    }
}

// dx from the forward's input x, output y and the upstream gradient g.
__device__ __forceinline__ float map_grad_one(int op, float x, float y, float g, float p, float q) {
    switch (op) {
        case 0: return x > 0.0f ? g : 0.0f;
        case 1: return g * y * (1.0f - y);
        case 2: return g * (1.0f - y * y);
        case 3: return g * y;
        case 4: return g / x;
        case 5: return g * 0.5f / y;
        case 6: return 2.0f * x * g;
        case 7: return x > 0.0f ? g : (x < 0.0f ? -g : 0.0f);
        case 8: return (x >= p && x <= q) ? g : 0.0f;
        default: return g * p * powf(x, p - 1.0f);
    }
}

extern "C" __global__ void map_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n, int op, float p,
                                       float q) {
    GRID_STRIDE(i, n) { y[i] = map_one(op, x[i], p, q); }
}

extern "C" __global__ void map_bwd_f32(const float* __restrict__ x, const float* __restrict__ y,
                                       const float* __restrict__ dy, float* __restrict__ dx, int n, int op, float p,
                                       float q) {
    GRID_STRIDE(i, n) { dx[i] = map_grad_one(op, x[i], y[i], dy[i], p, q); }
}
