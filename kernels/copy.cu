// Copies that move blocks of a tensor: concat / slice along an axis, and batched 2-D transpose.

// View both tensors as (outer, mid, inner) with different mid sizes; copy `count` mid-slices
// from src[.., src_off .. src_off+count, ..] to dst[.., dst_off .., ..].
// Concat on channels: outer = N, mid = C, inner = H*W. Batch slice: outer = 1, mid = N, inner = C*H*W.
extern "C" __global__ void copy_slice_f32(const float* __restrict__ src, float* __restrict__ dst, int outer,
                                          int src_mid, int dst_mid, int inner, int src_off, int dst_off,
                                          int count) {
    long long n = (long long)outer * count * inner;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        long long e = i % inner;
        long long t = i / inner;
        long long m = t % count;
        long long o = t / count;
        dst[(o * dst_mid + dst_off + m) * inner + e] = src[(o * src_mid + src_off + m) * inner + e];
    }
}

// y[b][c][r] = x[b][r][c] for a batch of R x C matrices; 32x32 tiles through shared memory so
// both the read and the write are coalesced. Block (32, 8), grid (ceil(C/32), ceil(R/32), batch).
extern "C" __global__ void transpose_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int R, int C) {
    __shared__ float tile[32][33];  // +1 column: no bank conflicts on the transposed read
    long long base = (long long)blockIdx.z * R * C;
    int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int r = r0 + j, c = c0 + threadIdx.x;
        if (r < R && c < C) tile[j][threadIdx.x] = x[base + (long long)r * C + c];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int c = c0 + j, r = r0 + threadIdx.x;
        if (r < R && c < C) y[base + (long long)c * R + r] = tile[threadIdx.x][j];
    }
}
