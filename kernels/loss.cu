// Losses. Forward kernels write per-element terms; the host sums them with reduce.cu (a
// deterministic tree, no atomics) and divides on the device, so no value goes to the host.
// Backward kernels read the upstream gradient (and the counted-pixel total) from device memory.

// Two-class pixel cross-entropy. logits (N,2,H,W), target (N,H,W) with 1 = lesion (> 0.5),
// optional mask (N,H,W): a pixel counts when mask > 0.5 (null = every pixel counts).
// loss_px = logsumexp(l0, l1) - l_target for counted pixels, else 0; w_px = 1 or 0.
extern "C" __global__ void ce2_fwd_f32(const float* __restrict__ logits, const float* __restrict__ target,
                                       const float* __restrict__ mask, float* __restrict__ loss_px,
                                       float* __restrict__ w_px, int N, int HW) {
    int n_px = N * HW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n_px; i += blockDim.x * gridDim.x) {
        int n = i / HW, p = i - n * HW;
        float l0 = logits[(2 * n) * HW + p], l1 = logits[(2 * n + 1) * HW + p];
        bool counted = mask == nullptr || mask[i] > 0.5f;
        float m = fmaxf(l0, l1);
        float lse = m + logf(expf(l0 - m) + expf(l1 - m));
        float lt = target[i] > 0.5f ? l1 : l0;
        loss_px[i] = counted ? lse - lt : 0.0f;
        w_px[i] = counted ? 1.0f : 0.0f;
    }
}

// dlogits = dout / count * (softmax - onehot(target)) on counted pixels, 0 elsewhere.
// count and dout are one-element device buffers.
extern "C" __global__ void ce2_bwd_f32(const float* __restrict__ logits, const float* __restrict__ target,
                                       const float* __restrict__ mask, const float* __restrict__ count,
                                       const float* __restrict__ dout, float* __restrict__ dlogits, int N,
                                       int HW) {
    int n_px = N * HW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n_px; i += blockDim.x * gridDim.x) {
        int n = i / HW, p = i - n * HW;
        int i0 = (2 * n) * HW + p, i1 = i0 + HW;
        bool counted = mask == nullptr || mask[i] > 0.5f;
        float g = counted && count[0] > 0.0f ? dout[0] / count[0] : 0.0f;
        float p1 = 1.0f / (1.0f + expf(logits[i0] - logits[i1]));  // softmax of class 1
        float t1 = target[i] > 0.5f ? 1.0f : 0.0f;
        dlogits[i0] = g * ((1.0f - p1) - (1.0f - t1));
        dlogits[i1] = g * (p1 - t1);
    }
}

// Binary cross-entropy with logits, the stable form: max(x,0) - x t + log(1 + exp(-|x|)).
extern "C" __global__ void bce_fwd_f32(const float* __restrict__ x, const float* __restrict__ t,
                                       float* __restrict__ loss, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        float v = x[i];
        loss[i] = fmaxf(v, 0.0f) - v * t[i] + log1pf(expf(-fabsf(v)));
    }
}

// d/dx of the mean: (sigmoid(x) - t) * dout / n.
extern "C" __global__ void bce_bwd_f32(const float* __restrict__ x, const float* __restrict__ t,
                                       const float* __restrict__ dout, float* __restrict__ dx, int n,
                                       float inv_n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        float s = 1.0f / (1.0f + expf(-x[i]));
        dx[i] = (s - t[i]) * dout[0] * inv_n;
    }
}
