// Batch normalisation over (N,H,W) per channel of an NCHW tensor, as PyTorch's BatchNorm2d:
// normalise with the biased batch variance; update running_var with the unbiased one.
//
//   bn_stats_f32     (training) one block per channel: mean and biased var, running-stat update
//   bn_stats_partials_f32 (training) the same from the partial sums a convolution's epilogue wrote
//   bn_fwd_f32       y = (x - mean) * rsqrt(var + eps) * gamma + beta, from batch or running stats
//   bn_bwd_reduce_f32 one block per channel: dbeta = sum dy, dgamma = sum dy * xhat
//   bn_bwd_dx_f32    dx, training (through the batch statistics) or eval (stats are constants)
// With `relu` the forward writes max(y, 0) in the same pass (y <= 0 -> 0, NaN kept, as the ReLU
// op), and the backward takes that output in its ReluMask: dy counts only where it is > 0 (the
// ReLU op's gradient), so the ReLU's own two passes over the tensor are gone. Where a convolution
// applied batch norm and the ReLU as it loaded its input (conv2d_nhwc.cu bn_relu_nchw_to_nhwc_bf16)
// there is no output to read: the mask recomputes batch norm's value from x (bn_value.cuh).
// With a `residual` (a ResNet block's shortcut) the forward adds it before the ReLU,
// relu(y + residual), in the same f32 operations as batch norm, add and ReLU done apart, so the
// same bits without the add's and the ReLU's passes; the backward's reduce then also writes the
// masked gradient (`g_out`), which is the residual's gradient and the dx kernel's upstream.

#include "block_reduce.cuh"
#include "bn_value.cuh"

// Element j of channel c, j in [0, N*HW).
__device__ __forceinline__ int chan_index(int j, int c, int C, int HW) {
    int n = j / HW;
    return (n * C + c) * HW + (j - n * HW);
}

// Channel c's batch mean and biased variance of `count` values, and the running update with the
// unbiased variance (running_* may be null: no update). Both statistics kernels end here.
__device__ __forceinline__ void store_channel_stats(int c, float mu, float v, int count, float* __restrict__ mean,
                                                    float* __restrict__ var, float* __restrict__ running_mean,
                                                    float* __restrict__ running_var, float momentum) {
    mean[c] = mu;
    var[c] = v;
    if (running_mean != nullptr && running_var != nullptr) {
        float unbiased = count > 1 ? v * (float)count / (float)(count - 1) : v;
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mu;
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * unbiased;
    }
}

// Two passes (mean, then centred squares) for accuracy. running_* may be null (no update).
extern "C" __global__ void bn_stats_f32(const float* __restrict__ x, float* __restrict__ mean,
                                        float* __restrict__ var, float* __restrict__ running_mean,
                                        float* __restrict__ running_var, int N, int C, int HW,
                                        float momentum) {
    int M = N * HW;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        float s = 0.0f;
        for (int j = threadIdx.x; j < M; j += blockDim.x) s += x[chan_index(j, c, C, HW)];
        float mu = block_sum(s) / (float)M;
        float q = 0.0f;
        for (int j = threadIdx.x; j < M; j += blockDim.x) {
            float d = x[chan_index(j, c, C, HW)] - mu;
            q += d * d;
        }
        float v = block_sum(q) / (float)M;
        if (threadIdx.x == 0) store_channel_stats(c, mu, v, M, mean, var, running_mean, running_var, momentum);
    }
}

// Training statistics from the partial statistics of a tensor-core convolution's epilogue
// (conv_tc.cuh store_tile): for channel c and slot j < P, the sum of the slot's values at
// partials[c * P + j] and the sum of their squared deviations from the slot's mean at
// partials[(C + c) * P + j]; slot j holds n_j = min(width, count - j * width) values (none past
// the end). Combined in double: mean = sum / count, M2 = sum_j (M2_j + n_j (mean_j - mean)^2)
// (Chan, Golub and LeVeque), var = M2 / count. The outputs and the running update are
// bn_stats_f32's.
extern "C" __global__ void bn_stats_partials_f32(const float* __restrict__ partials, int P, int width,
                                                 float* __restrict__ mean, float* __restrict__ var,
                                                 float* __restrict__ running_mean, float* __restrict__ running_var,
                                                 int C, int count, float momentum) {
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const float* sums = partials + (long long)c * P;
        const float* m2 = partials + (long long)(C + c) * P;
        double s = 0.0;
        for (int j = threadIdx.x; j < P; j += blockDim.x) s += (double)sums[j];
        const double mu = block_sum_f64(s) / count;
        double q = 0.0;
        for (int j = threadIdx.x; j < P; j += blockDim.x) {
            const int n = min(width, count - j * width);
            if (n > 0) {
                const double d = (double)sums[j] / n - mu;
                q += (double)m2[j] + n * d * d;
            }
        }
        q = block_sum_f64(q);
        if (threadIdx.x == 0) store_channel_stats(c, (float)mu, (float)(q / count), count, mean, var, running_mean, running_var, momentum);
    }
}

extern "C" __global__ void bn_fwd_f32(const float* __restrict__ x, const float* __restrict__ mean,
                                      const float* __restrict__ var, const float* __restrict__ gamma,
                                      const float* __restrict__ beta, const float* __restrict__ residual,
                                      float* __restrict__ y, int n, int C, int HW, float eps, int relu) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int c = (i / HW) % C;
        float v = bn_value(x[i], mean[c], var[c], gamma[c], beta[c], eps);
        if (residual != nullptr) v = v + residual[i];  // rounded apart, as the add op rounds it
        y[i] = relu ? relu_value(v) : v;
    }
}

// Where a fused ReLU's gradient passes: where its output is > 0, read from the output (`out`) or
// recomputed from the input (`from_x`: batch norm's value, bn_value's bits; a convolution's
// prologue applied the ReLU and kept no output); neither: no ReLU.
struct ReluMask {
    const float* __restrict__ out;
    const float* __restrict__ gamma;  // non-null: from_x, with beta
    const float* __restrict__ beta;
};

// dy[i], or 0 where the fused ReLU's output is not > 0.
__device__ __forceinline__ float bn_upstream(const float* __restrict__ dy, const ReluMask& m, const float* __restrict__ x,
                                             const float* __restrict__ mean, const float* __restrict__ var, float eps, int i,
                                             int c) {
    if (m.out != nullptr) return m.out[i] > 0.0f ? dy[i] : 0.0f;
    if (m.gamma != nullptr) return bn_value(x[i], mean[c], var[c], m.gamma[c], m.beta[c], eps) > 0.0f ? dy[i] : 0.0f;
    return dy[i];
}

// dsum[c] = sum dy (= dbeta), dxhat[c] = sum dy * xhat (= dgamma); g_out (null: none) gets the
// masked dy itself.
extern "C" __global__ void bn_bwd_reduce_f32(const float* __restrict__ x, const float* __restrict__ dy, ReluMask relu,
                                             const float* __restrict__ mean, const float* __restrict__ var,
                                             float* __restrict__ dsum, float* __restrict__ dxhat,
                                             float* __restrict__ g_out, int N, int C, int HW, float eps) {
    int M = N * HW;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        float mu = mean[c], inv = rsqrtf(var[c] + eps);
        float s = 0.0f, sx = 0.0f;
        for (int j = threadIdx.x; j < M; j += blockDim.x) {
            int i = chan_index(j, c, C, HW);
            float g = bn_upstream(dy, relu, x, mean, var, eps, i, c);
            if (g_out != nullptr) g_out[i] = g;
            s += g;
            sx += g * (x[i] - mu) * inv;
        }
        s = block_sum(s);
        sx = block_sum(sx);
        if (threadIdx.x == 0) {
            dsum[c] = s;
            dxhat[c] = sx;
        }
    }
}

// training != 0: dx = gamma * inv / M * (M * dy - dsum - xhat * dxhat)
// training == 0: dx = gamma * inv * dy (running statistics are constants)
extern "C" __global__ void bn_bwd_dx_f32(const float* __restrict__ x, const float* __restrict__ dy, ReluMask relu,
                                         const float* __restrict__ mean, const float* __restrict__ var,
                                         const float* __restrict__ gamma, const float* __restrict__ dsum,
                                         const float* __restrict__ dxhat, float* __restrict__ dx, int n,
                                         int C, int HW, int M, float eps, int training) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int c = (i / HW) % C;
        float inv = rsqrtf(var[c] + eps);
        const float g = bn_upstream(dy, relu, x, mean, var, eps, i, c);
        if (training) {
            float xhat = (x[i] - mean[c]) * inv;
            dx[i] = gamma[c] * inv / (float)M * ((float)M * g - dsum[c] - xhat * dxhat[c]);
        } else {
            dx[i] = gamma[c] * inv * g;
        }
    }
}
