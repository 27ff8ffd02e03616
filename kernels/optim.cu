// Optimisers: one launch updates every parameter tensor of a model.
//
// The host uploads, once per parameter set, a table of device pointers (4 per tensor: param,
// grad, state1, state2) and lengths, plus a chunk table splitting every tensor into pieces of at
// most `chunk` elements: block b updates chunk b. Learning rates and bias corrections are
// computed on the host per step (poly LR, Adam's 1 - beta^t) and passed in.

struct Chunk {
    int tensor;       // index into ptrs/lens
    long long start;  // first element of the chunk within the tensor
};

// PyTorch SGD (dampening 0, no Nesterov): g' = g + wd p; buf = mu buf + g'; p -= lr buf.
// ptrs[4t + 0..2] = param, grad, momentum buffer (zero at the first step).
extern "C" __global__ void sgd_fwd_f32(const unsigned long long* __restrict__ ptrs,
                                       const long long* __restrict__ lens, const Chunk* __restrict__ chunks,
                                       int n_chunks, int chunk, float lr, float momentum, float weight_decay) {
    for (int b = blockIdx.x; b < n_chunks; b += gridDim.x) {
        Chunk ch = chunks[b];
        float* p = (float*)ptrs[4 * ch.tensor + 0];
        const float* g = (const float*)ptrs[4 * ch.tensor + 1];
        float* buf = (float*)ptrs[4 * ch.tensor + 2];
        long long end = min(lens[ch.tensor], ch.start + (long long)chunk);
        for (long long i = ch.start + threadIdx.x; i < end; i += blockDim.x) {
            float gi = g[i] + weight_decay * p[i];
            float v = momentum * buf[i] + gi;
            buf[i] = v;
            p[i] -= lr * v;
        }
    }
}

// PyTorch Adam (L2 weight decay added to the gradient):
// m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2; p -= lr (m / bc1) / (sqrt(v / bc2) + eps)
// with bc1 = 1 - b1^t, bc2 = 1 - b2^t. ptrs[4t + 0..3] = param, grad, m, v.
extern "C" __global__ void adam_fwd_f32(const unsigned long long* __restrict__ ptrs,
                                        const long long* __restrict__ lens, const Chunk* __restrict__ chunks,
                                        int n_chunks, int chunk, float lr, float beta1, float beta2, float eps,
                                        float weight_decay, float bc1, float bc2) {
    for (int b = blockIdx.x; b < n_chunks; b += gridDim.x) {
        Chunk ch = chunks[b];
        float* p = (float*)ptrs[4 * ch.tensor + 0];
        const float* g = (const float*)ptrs[4 * ch.tensor + 1];
        float* m = (float*)ptrs[4 * ch.tensor + 2];
        float* v = (float*)ptrs[4 * ch.tensor + 3];
        long long end = min(lens[ch.tensor], ch.start + (long long)chunk);
        for (long long i = ch.start + threadIdx.x; i < end; i += blockDim.x) {
            float gi = g[i] + weight_decay * p[i];
            float mi = beta1 * m[i] + (1.0f - beta1) * gi;
            float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        }
    }
}
