// Block-wide reductions shared by the kernels (included by batchnorm.cu, conv1d.cu, reduce.cu;
// build.rs inlines it for NVRTC). Every thread gets the result. blockDim.x must be a multiple
// of 32, <= 1024.
#pragma once

// -inf without <math.h>, so the file also compiles under NVRTC.
#define NEG_INF __int_as_float(0xff800000)

template <class T>
__device__ __forceinline__ T block_sum_of(T v) {
    __shared__ T warp_sums[32];  // one array per type
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // warp_sums may still be read by a previous call
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    int nwarps = blockDim.x >> 5;
    v = lane < nwarps ? warp_sums[lane] : T(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return __shfl_sync(0xffffffffu, v, 0);
}
__device__ __forceinline__ float block_sum(float v) { return block_sum_of<float>(v); }
__device__ __forceinline__ double block_sum_f64(double v) { return block_sum_of<double>(v); }

__device__ __forceinline__ float block_max(float v) {
    __shared__ float warp_max[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) warp_max[warp] = v;
    __syncthreads();
    int nwarps = blockDim.x >> 5;
    v = lane < nwarps ? warp_max[lane] : NEG_INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    return __shfl_sync(0xffffffffu, v, 0);
}
