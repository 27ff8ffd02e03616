// Max pooling (square window k, stride s, zero-size padding p: padded cells never win) and
// bilinear resize (align_corners = false, PyTorch's source-index rule) on NCHW planes.

// Runs f(i, plane, row, col) for every cell i of `planes` planes of rows x cols, grid-stride: the
// walk of maxpool_bwd and resize_bilinear_bwd (over their input cells) and of the resize forward
// (over its outputs).
// maxpool_fwd writes the same walk out: through this lambda, ptxas orders two of its bounds
// compares differently, and its SASS stays as it was verified.
template <class F>
__device__ __forceinline__ void for_each_cell(int planes, int rows, int cols, F f) {
    int n = planes * rows * cols;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int col = i % cols;
        int row = (i / cols) % rows;
        f(i, i / (cols * rows), row, col);
    }
}

// y = max over the window; idx = the winning input cell's offset h * W + w within its plane
// (first maximum in scan order; NaN wins so it propagates, as in PyTorch).
extern "C" __global__ void maxpool_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                           unsigned int* __restrict__ idx, int planes, int H, int W, int OH, int OW,
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
        idx[i] = (unsigned int)best_i;  // every window holds a cell (p <= k/2): best_i >= 0
    }
}

// Gather form (no atomics, deterministic): each input cell sums dy over the outputs whose
// window covers it and whose recorded winner it is.
extern "C" __global__ void maxpool_bwd_f32(const float* __restrict__ dy, const unsigned int* __restrict__ idx,
                                           float* __restrict__ dx, int planes, int H, int W, int OH, int OW,
                                           int k, int s, int p) {
    for_each_cell(planes, H, W, [&](int i, int plane, int h, int w) {
        // outputs oh with oh*s - p <= h <= oh*s - p + k - 1
        int lo_h = h + p - k + 1, lo_w = w + p - k + 1;
        int oh0 = lo_h <= 0 ? 0 : (lo_h + s - 1) / s;
        int ow0 = lo_w <= 0 ? 0 : (lo_w + s - 1) / s;
        int oh1 = min(OH - 1, (h + p) / s);
        int ow1 = min(OW - 1, (w + p) / s);
        unsigned int self = h * W + w;
        long long obase = (long long)plane * OH * OW;
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; ++oh)
            for (int ow = ow0; ow <= ow1; ++ow) {
                long long o = obase + oh * OW + ow;
                if (idx[o] == self) acc += dy[o];
            }
        dx[i] = acc;
    });
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

// Output pixel i of the flattened (planes, OH, OW) output: its plane, its source rows h0, h1
// and columns w0, w1, and the fractions lh, lw of the second row and column.
struct BilinearTap {
    int plane, h0, h1, w0, w1;
    float lh, lw;
};

// Runs f(i, tap) for every output pixel (the forward's walk).
template <class F>
__device__ __forceinline__ void for_each_bilinear_tap(int planes, int H, int W, int OH, int OW, float scale_h,
                                                      float scale_w, F f) {
    for_each_cell(planes, OH, OW, [&](int i, int plane, int oh, int ow) {
        BilinearTap t;
        t.plane = plane;
        bilinear_src(oh, H, scale_h, t.h0, t.h1, t.lh);
        bilinear_src(ow, W, scale_w, t.w0, t.w1, t.lw);
        f(i, t);
    });
}

// scale_h = H / OH, scale_w = W / OW (computed on the host, as PyTorch does for a given size).
extern "C" __global__ void resize_bilinear_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                                   int planes, int H, int W, int OH, int OW, float scale_h,
                                                   float scale_w) {
    for_each_bilinear_tap(planes, H, W, OH, OW, scale_h, scale_w, [&](int i, const BilinearTap& t) {
        const float* xp = x + (long long)t.plane * H * W;
        float top = (1.0f - t.lw) * xp[t.h0 * W + t.w0] + t.lw * xp[t.h0 * W + t.w1];
        float bot = (1.0f - t.lw) * xp[t.h1 * W + t.w0] + t.lw * xp[t.h1 * W + t.w1];
        y[i] = (1.0f - t.lh) * top + t.lh * bot;
    });
}

// The weight with which output row (or column) `dst` reads input row `src` of `in`: 1 - l1 as its
// first neighbour, l1 as its second, both when they coincide at the border, else 0.
__device__ __forceinline__ float bilinear_weight(int dst, int in, float scale, int src) {
    int i0, i1;
    float l1;
    bilinear_src(dst, in, scale, i0, i1, l1);
    return (i0 == src ? 1.0f - l1 : 0.0f) + (i1 == src ? l1 : 0.0f);
}

// The output rows (or columns), out of `out`, that may read input row `src`: those whose first
// neighbour is src - 1 or src, widened by one on each side against rounding (at the last input
// row the upper end passes the last output, where the clamped rows are); bilinear_weight says
// which do.
__device__ __forceinline__ void bilinear_reach(int src, int out, float scale, int& lo, int& hi) {
    lo = max(0, (int)floorf((src - 0.5f) / scale - 0.5f) - 1);
    hi = min(out - 1, (int)ceilf((src + 1.5f) / scale - 0.5f) + 1);
}

// Gathered per input cell, no atomics (the same bits every run): dx[h, w] is the sum, over the
// output cells whose taps read it (rows, then columns, in order), of the tap's weight times dy,
// grouped as the forward's rows. Every dx cell is written.
extern "C" __global__ void resize_bilinear_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx,
                                                   int planes, int H, int W, int OH, int OW, float scale_h,
                                                   float scale_w) {
    for_each_cell(planes, H, W, [&](int i, int plane, int h, int w) {
        int oh0, oh1, ow0, ow1;
        bilinear_reach(h, OH, scale_h, oh0, oh1);
        bilinear_reach(w, OW, scale_w, ow0, ow1);
        const float* dp = dy + (long long)plane * OH * OW;
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; ++oh) {
            const float wh = bilinear_weight(oh, H, scale_h, h);
            if (wh == 0.0f) continue;
            float row = 0.0f;
            for (int ow = ow0; ow <= ow1; ++ow) {
                const float ww = bilinear_weight(ow, W, scale_w, w);
                if (ww != 0.0f) row += ww * dp[oh * OW + ow];
            }
            acc += wh * row;
        }
        dx[i] = acc;
    });
}
