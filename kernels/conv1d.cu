// 1-D convolution across channels (ECA attention): x (N, C) seen as N signals of length C,
// one odd-sized kernel w (k) shared by all, zero padding p = (k-1)/2, no bias.
//   y[n,c] = sum_j w[j] x[n, c + j - p]

#include "block_reduce.cuh"

// out[n,c] = sum_j w[j] in[n, c + j - p], or with the taps mirrored, sum_j w[j] in[n, c - j + p];
// zero outside [0, C).
template <bool MIRRORED>
__device__ __forceinline__ void conv1d_taps(const float* __restrict__ in, const float* __restrict__ w,
                                            float* __restrict__ out, int N, int C, int k) {
    int p = (k - 1) / 2;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N * C; i += blockDim.x * gridDim.x) {
        int n = i / C, c = i - n * C;
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) {
            int src = MIRRORED ? c - j + p : c + j - p;
            if (src >= 0 && src < C) acc += w[j] * in[n * C + src];
        }
        out[i] = acc;
    }
}

extern "C" __global__ void conv1d_fwd_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          float* __restrict__ y, int N, int C, int k) {
    conv1d_taps<false>(x, w, y, N, C, k);
}

// dx[n,c] = sum_j w[j] dy[n, c - j + p]
extern "C" __global__ void conv1d_bwd_input_f32(const float* __restrict__ dy, const float* __restrict__ w,
                                                float* __restrict__ dx, int N, int C, int k) {
    conv1d_taps<true>(dy, w, dx, N, C, k);
}

// dw[j] = sum_{n,c} dy[n,c] x[n, c + j - p]; one block per tap j.
extern "C" __global__ void conv1d_bwd_weight_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                                 float* __restrict__ dw, int N, int C, int k) {
    int p = (k - 1) / 2;
    for (int j = blockIdx.x; j < k; j += gridDim.x) {
        float acc = 0.0f;
        for (int i = threadIdx.x; i < N * C; i += blockDim.x) {
            int n = i / C, c = i - n * C;
            int src = c + j - p;
            if (src >= 0 && src < C) acc += dy[i] * x[n * C + src];
        }
        acc = block_sum(acc);
        if (threadIdx.x == 0) dw[j] = acc;
    }
}
