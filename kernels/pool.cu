// Max pooling (square window k, stride s, zero-size padding p: padded cells never win) and
// bilinear resize (align_corners = false, PyTorch's source-index rule) on NCHW planes.

// y = max over the window; idx = the winning input cell's offset h * W + w within its plane
// (first maximum in scan order; NaN wins so it propagates, as in PyTorch).
extern "C" __global__ void maxpool_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                           int* __restrict__ idx, int planes, int H, int W, int OH, int OW,
                                           int k, int s, int p) {
    int n = planes * OH * OW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int ow = i % OW;
        int oh = (i / OW) % OH;
        int plane = i / (OW * OH);
        const float* xp = x + (long long)plane * H * W;
        float best = __int_as_float(0xff800000);  // -inf
        int best_i = -1;
        for (int r = 0; r < k; ++r) {
            int h = oh * s - p + r;
            if (h < 0 || h >= H) continue;
            for (int q = 0; q < k; ++q) {
                int w = ow * s - p + q;
                if (w < 0 || w >= W) continue;
                float v = xp[h * W + w];
                if (best_i < 0 || v > best || isnan(v)) {
                    best = v;
                    best_i = h * W + w;
                    if (isnan(v)) { r = k; break; }
                }
            }
        }
        y[i] = best;
        idx[i] = best_i;
    }
}

// Gather form (no atomics, deterministic): each input cell sums dy over the outputs whose
// window covers it and whose recorded winner it is.
extern "C" __global__ void maxpool_bwd_f32(const float* __restrict__ dy, const int* __restrict__ idx,
                                           float* __restrict__ dx, int planes, int H, int W, int OH, int OW,
                                           int k, int s, int p) {
    int n = planes * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int w = i % W;
        int h = (i / W) % H;
        int plane = i / (W * H);
        // outputs oh with oh*s - p <= h <= oh*s - p + k - 1
        int lo_h = h + p - k + 1, lo_w = w + p - k + 1;
        int oh0 = lo_h <= 0 ? 0 : (lo_h + s - 1) / s;
        int ow0 = lo_w <= 0 ? 0 : (lo_w + s - 1) / s;
        int oh1 = min(OH - 1, (h + p) / s);
        int ow1 = min(OW - 1, (w + p) / s);
        int self = h * W + w;
        long long obase = (long long)plane * OH * OW;
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; ++oh)
            for (int ow = ow0; ow <= ow1; ++ow) {
                long long o = obase + oh * OW + ow;
                if (idx[o] == self) acc += dy[o];
            }
        dx[i] = acc;
    }
}

// PyTorch area_pixel_compute_source_index with align_corners = false, then the clamp of the
// upper neighbour at the border.
__device__ __forceinline__ void bilinear_src(int dst, int in, float scale, int& i0, int& i1, float& l1) {
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    i0 = min((int)src, in - 1);
    i1 = i0 + (i0 < in - 1 ? 1 : 0);
    l1 = src - (float)i0;
}

// scale_h = H / OH, scale_w = W / OW (computed on the host, as PyTorch does for a given size).
extern "C" __global__ void resize_bilinear_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                                   int planes, int H, int W, int OH, int OW, float scale_h,
                                                   float scale_w) {
    int n = planes * OH * OW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int ow = i % OW;
        int oh = (i / OW) % OH;
        int plane = i / (OW * OH);
        int h0, h1, w0, w1;
        float lh, lw;
        bilinear_src(oh, H, scale_h, h0, h1, lh);
        bilinear_src(ow, W, scale_w, w0, w1, lw);
        const float* xp = x + (long long)plane * H * W;
        float top = (1.0f - lw) * xp[h0 * W + w0] + lw * xp[h0 * W + w1];
        float bot = (1.0f - lw) * xp[h1 * W + w0] + lw * xp[h1 * W + w1];
        y[i] = (1.0f - lh) * top + lh * bot;
    }
}

// Scatter with atomics: dx must be zero-filled by the host before the launch.
extern "C" __global__ void resize_bilinear_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx,
                                                   int planes, int H, int W, int OH, int OW, float scale_h,
                                                   float scale_w) {
    int n = planes * OH * OW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int ow = i % OW;
        int oh = (i / OW) % OH;
        int plane = i / (OW * OH);
        int h0, h1, w0, w1;
        float lh, lw;
        bilinear_src(oh, H, scale_h, h0, h1, lh);
        bilinear_src(ow, W, scale_w, w0, w1, lw);
        float* dp = dx + (long long)plane * H * W;
        float g = dy[i];
        atomicAdd(&dp[h0 * W + w0], (1.0f - lh) * (1.0f - lw) * g);
        atomicAdd(&dp[h0 * W + w1], (1.0f - lh) * lw * g);
        atomicAdd(&dp[h1 * W + w0], lh * (1.0f - lw) * g);
        atomicAdd(&dp[h1 * W + w1], lh * lw * g);
    }
}
