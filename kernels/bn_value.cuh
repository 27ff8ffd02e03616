// Batch norm's value of one element, in the one sequence of f32 operations every kernel that
// computes it uses: batchnorm.cu's forward, its backward where a fused ReLU's mask is recomputed
// from the input instead of read from the output, and conv2d_nhwc.cu's copy that applies batch
// norm and ReLU as it makes a convolution's channels-last input. One function, so the three agree
// to the bit (a fused op then gives the composed ops' bits).
#pragma once

__device__ __forceinline__ float bn_value(float x, float mean, float var, float gamma, float beta, float eps) {
    const float scale = gamma * rsqrtf(var + eps);
    return (x - mean) * scale + beta;
}

// The ReLU op's rule: y <= 0 -> 0, NaN kept.
__device__ __forceinline__ float relu_value(float y) { return y <= 0.0f ? 0.0f : y; }
