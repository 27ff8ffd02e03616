// Elementwise kernels that the any-rank kernels of nd.cu do not cover: the scalar affine map and
// fills. Binary ops, activations and their gradients live in nd.cu.
//
// Every kernel walks its elements with a grid-stride loop, so any grid size is correct; the host
// picks one from the element count. Sizes are int: the host refuses tensors of 2^31 elements or more.

#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

// ---- scalar ops: y = alpha * x + beta covers add/sub/mul/div by a scalar and negation;
// its backward is the same kernel with (alpha, 0).
extern "C" __global__ void affine_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n,
                                          float alpha, float beta) {
    GRID_STRIDE(i, n) { y[i] = fmaf(alpha, x[i], beta); }
}
extern "C" __global__ void fill_fwd_f32(float* __restrict__ y, int n, float value) {
    GRID_STRIDE(i, n) { y[i] = value; }
}
