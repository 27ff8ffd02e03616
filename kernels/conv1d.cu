// 1-D convolution across channels (ECA attention): x (N, C) seen as N signals of length C,
// one odd-sized kernel w (k) shared by all, zero padding p = (k-1)/2, no bias.
//   y[n,c] = sum_j w[j] x[n, c + j - p]

#include "block_reduce.cuh"

extern "C" __global__ void conv1d_fwd_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          float* __restrict__ y, int N, int C, int k) {
    int p = (k - 1) / 2;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N * C; i += blockDim.x * gridDim.x) {
        int n = i / C, c = i - n * C;
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) {
            int src = c + j - p;
            if (src >= 0 && src < C) acc += w[j] * x[n * C + src];
        }
        y[i] = acc;
    }
}

// dx[n,c] = sum_j w[j] dy[n, c - j + p]
extern "C" __global__ void conv1d_bwd_input_f32(const float* __restrict__ dy, const float* __restrict__ w,
                                                float* __restrict__ dx, int N, int C, int k) {
    int p = (k - 1) / 2;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N * C; i += blockDim.x * gridDim.x) {
        int n = i / C, c = i - n * C;
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) {
            int o = c - j + p;
            if (o >= 0 && o < C) acc += w[j] * dy[n * C + o];
        }
        dx[i] = acc;
    }
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
