// The geometry of one 2-D convolution, shared by conv2d.cu (fp32 SIMT) and conv2d_tc.cu (tensor
// cores); src/ops/conv/cuda.rs mirrors it as `ConvGeom`.
#pragma once

struct ConvGeom {
    int n, c, h, w;        // input
    int k, r, s;           // weight (K, C, R, S)
    int oh, ow;            // output
    int stride, pad, dil;
};
