// What the convolution checks (conv_tc_check, conv_nhwc_check) share: a shape as the tests write
// it and the kernels' ConvGeom of it (the output size as src/ops/conv computes it). Included
// after the kernel file, which defines ConvGeom (conv_geom.cuh).
#pragma once
#include <cstddef>

// (N, C, H, W) input, K output channels, an R x S kernel, stride, padding, dilation.
struct Shape { int n, c, h, w, k, r, s, stride, pad, dil; };

inline ConvGeom conv_geom(const Shape& sh) {
    const int oh = (sh.h + 2 * sh.pad - sh.dil * (sh.r - 1) - 1) / sh.stride + 1;
    const int ow = (sh.w + 2 * sh.pad - sh.dil * (sh.s - 1) - 1) / sh.stride + 1;
    return {sh.n, sh.c, sh.h, sh.w, sh.k, sh.r, sh.s, oh, ow, sh.stride, sh.pad, sh.dil};
}

inline size_t cdiv(size_t a, size_t b) { return (a + b - 1) / b; }
