// The CUDA driver, cuBLAS and NVRTC calls coseg makes (through cudarc's dynamic loading), run on
// the CPU: one shared library that build.sh links as libcuda.so, libcublas.so and libnvrtc.so.
// Device memory is host memory; every launch runs at once on the calling thread, its kernel
// compiled from kernels/*.cu by kernel-emu (emu.h with fibers, emu_tc.h's PTX emulations).
// What a real driver refuses, this refuses too, with the same codes: dynamic shared memory above
// 48 KB without cuFuncSetAttribute, above the card's 227 KB, blocks above 1024 threads, grids
// beyond 65535 in y or z, a synchronous call on a stream that is being captured (the capture is
// then invalidated and cuStreamEndCapture fails, as it would on a GPU). A graph records the
// launches, copies and memsets issued while capturing (with copies of the kernels' parameters)
// and replays them. Events record the host clock. The device reports itself as an sm_90 part
// with 132 multiprocessors (the H200's count, so grid-size heuristics take the H200's paths;
// CUDA_EMU_SM_COUNT sets another: test.sh's race detection takes 12, since ThreadSanitizer follows
// at most 8128 threads and a cooperative grid runs all its threads at once).
// Not emulated: concurrency between streams (everything is in issue order), 2-D/3-D blocks.
#include "registry.h"
#include "emu_tc.h"
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {
// CUresult codes (cuda.h).
enum : int {
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    NOT_SUPPORTED = 801,
    STREAM_CAPTURE_UNSUPPORTED = 900,
    STREAM_CAPTURE_INVALIDATED = 901,
    LAUNCH_OUT_OF_RESOURCES = 701,
    INVALID_CONFIGURATION = 9,
};
constexpr int SMEM_DEFAULT = 48 * 1024, SMEM_OPTIN = 232448;
const int SM_COUNT = [] {
    const char* e = std::getenv("CUDA_EMU_SM_COUNT");
    const int n = e ? std::atoi(e) : 132;
    if (n >= 1 && n <= 1024) return n;
    std::fprintf(stderr, "cuda-emu: CUDA_EMU_SM_COUNT=%s is not 1 to 1024; 132 SMs\n", e);
    return 132;
}();
constexpr size_t TOTAL_MEMORY = size_t(141) << 30;

std::recursive_mutex& lock() {
    static std::recursive_mutex m;
    return m;
}
bool verbose() {
    static const bool v = std::getenv("CUDA_EMU_LOG") && std::strcmp(std::getenv("CUDA_EMU_LOG"), "1") == 0;
    return v;
}
void note(const char* fmt, ...) {
    if (!verbose()) return;
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "cuda-emu: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
}

struct Function {
    const EmuKernel* kernel;
    const char* module;
    int max_dynamic_smem = SMEM_DEFAULT;
};
std::unordered_map<std::string, Function>& functions() {
    static std::unordered_map<std::string, Function> f;
    return f;
}

struct Graph {
    std::vector<std::function<void()>> ops;
};
struct Stream {
    Graph* capture = nullptr;  // non-null while capturing
    bool invalidated = false;
};
Stream g_null_stream;
Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &g_null_stream; }

std::map<uintptr_t, size_t> g_allocs;  // device allocations: base -> bytes
size_t g_allocated = 0;

// Exactly `bytes` (256-byte aligned, as cuMemAlloc's): under CUDA_EMU_ASAN a kernel that reads or
// writes past a buffer's end is reported.
void* device_alloc(size_t bytes) {
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1)) return nullptr;
    note("alloc %p %zu bytes", p, bytes);
    g_allocs[(uintptr_t)p] = bytes;
    g_allocated += bytes;
    return p;
}
int device_free(uintptr_t p) {
    auto it = g_allocs.find(p);
    if (it == g_allocs.end()) return INVALID_VALUE;
    g_allocated -= it->second;
    g_allocs.erase(it);
    std::free((void*)p);
    return OK;
}

// Runs `op` now, or records it when `s` is being captured.
int enqueue(void* s, std::function<void()> op) {
    Stream* st = stream_of(s);
    if (st->capture) {
        st->capture->ops.push_back(std::move(op));
    } else {
        op();
    }
    return OK;
}
// A call that waits for the host: refused on a capturing stream, and the capture invalidated.
int synchronous(void* s) {
    Stream* st = stream_of(s);
    if (st->capture) {
        st->invalidated = true;
        note("a synchronous call during a capture: capture invalidated");
        return STREAM_CAPTURE_UNSUPPORTED;
    }
    return OK;
}
std::vector<Stream*>& streams() {
    static std::vector<Stream*> v{&g_null_stream};
    return v;
}
// A wait for the whole device (context or event synchronisation): refused while any stream captures.
int synchronous_device() {
    for (Stream* s : streams())
        if (s->capture) return synchronous(s);
    return OK;
}

int launch(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
           void* stream, void** params, bool cooperative) {
    auto* fn = static_cast<Function*>(f);
    if (!fn) return INVALID_HANDLE;
    const EmuKernel& k = *fn->kernel;
    if (bx * by * bz == 0 || bx * by * bz > 1024 || gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) {
        note("%s: invalid configuration grid (%u,%u,%u) block (%u,%u,%u)", k.name, gx, gy, gz, bx, by, bz);
        return INVALID_VALUE;
    }
    if ((int)smem > fn->max_dynamic_smem) {
        note("%s: %u bytes of dynamic shared memory, %d allowed (cuFuncSetAttribute)", k.name, smem, fn->max_dynamic_smem);
        return INVALID_VALUE;
    }
    if (by != 1 || bz != 1) {
        std::fprintf(stderr, "cuda-emu: %s: blocks of (%u,%u,%u) threads: only 1-D blocks are emulated\n", k.name, bx, by, bz);
        return NOT_SUPPORTED;
    }
    if (cooperative && (long)gx * gy * gz > 2L * SM_COUNT) {
        note("%s: cooperative grid of %u blocks exceeds what is co-resident", k.name, gx * gy * gz);
        return 720;  // CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
    }
    if (!params && !k.param_sizes.empty()) return INVALID_VALUE;
    // The parameters' bytes, kept with the op (a captured launch replays them later).
    std::vector<std::vector<char>> bytes;
    for (size_t i = 0; i < k.param_sizes.size(); ++i) {
        const char* p = static_cast<const char*>(params[i]);
        bytes.emplace_back(p, p + k.param_sizes[i]);
    }
    const EmuKernel* kp = &k;
    return enqueue(stream, [kp, bytes = std::move(bytes), gx, gy, gz, bx, smem, cooperative]() mutable {
        std::vector<void*> ptrs;
        for (auto& b : bytes) ptrs.push_back(b.data());
        void** p = ptrs.data();
        if (smem) {
            emu_set_dynamic_smem(smem);
        } else {
            emu_clear_dynamic_smem();
        }
        auto body = [kp, p] { kp->call(kp->fn, p); };
        if (verbose()) {
            // the parameters as the kernel reads them: 8 bytes as an address, 4 as an int (and a
            // float), larger ones (structs) by size
            std::string args;
            for (auto& b : bytes) {
                char t[64];
                if (b.size() == 8) {
                    unsigned long long v;
                    std::memcpy(&v, b.data(), 8);
                    std::snprintf(t, sizeof t, " %#llx", v);
                } else if (b.size() == 4) {
                    int v;
                    float f;
                    std::memcpy(&v, b.data(), 4);
                    std::memcpy(&f, b.data(), 4);
                    std::snprintf(t, sizeof t, " %d(%g)", v, f);
                } else {
                    std::snprintf(t, sizeof t, " [%zu bytes]", b.size());
                }
                args += t;
            }
            note("launch %s grid (%u,%u,%u) block %u smem %u%s:%s", kp->name, gx, gy, gz, bx, smem, cooperative ? " cooperative" : "", args.c_str());
        }
        if (cooperative) {
            launch_cooperative({gx, gy, gz}, bx, body);
        } else {
            ::launch({gx, gy, gz}, bx, body);
        }
        emu_clear_dynamic_smem();
    });
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
struct Event {
    double at = 0;
    bool recorded = false;
};
}  // namespace

void emu_register_module(const char* module, const EmuKernel* kernels, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        auto [it, fresh] = functions().emplace(kernels[i].name, Function{&kernels[i], module});
        if (!fresh) {
            std::fprintf(stderr, "cuda-emu: kernel %s defined in modules %s and %s\n", kernels[i].name, it->second.module, module);
            std::abort();
        }
    }
}

#define API extern "C" __attribute__((visibility("default"))) int
#define LOCK std::lock_guard<std::recursive_mutex> guard(lock())
typedef unsigned long long CUdeviceptr;

// --- initialisation, device, context
API cuInit(unsigned) { return OK; }
API cuDriverGetVersion(int* v) { *v = 13000; return OK; }
API cuDeviceGetCount(int* n) { *n = 1; return OK; }
API cuDeviceGet(int* d, int ordinal) { if (ordinal != 0) return INVALID_VALUE; *d = 0; return OK; }
API cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, len, "coseg CUDA emulator (CPU, sm_90, %d SMs)", SM_COUNT);
    return OK;
}
API cuDeviceTotalMem_v2(size_t* bytes, int) { *bytes = TOTAL_MEMORY; return OK; }
API cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
        case 1: *v = 1024; break;                 // max threads per block
        case 2: *v = 1024; break;                 // max block x
        case 3: case 4: *v = 64; break;           // max block y, z
        case 5: *v = 2147483647; break;           // max grid x
        case 6: case 7: *v = 65535; break;        // max grid y, z
        case 8: *v = SMEM_DEFAULT; break;         // shared memory per block
        case 10: *v = 32; break;                  // warp size
        case 13: *v = 1980000; break;             // clock rate (kHz)
        case 16: *v = SM_COUNT; break;            // multiprocessors
        case 38: *v = 50 << 20; break;            // L2 bytes
        case 39: *v = 2048; break;                // threads per multiprocessor
        case 41: *v = 1; break;                   // unified addressing
        case 75: *v = 9; break;                   // compute capability major
        case 76: *v = 0; break;                   // minor
        case 81: *v = 233472; break;              // shared memory per multiprocessor
        case 82: *v = 65536; break;               // registers per multiprocessor
        case 95: *v = 1; break;                   // cooperative launch
        case 97: *v = SMEM_OPTIN; break;          // shared memory per block, opt-in
        case 115: *v = 1; break;                  // memory pools
        default: *v = 0;
    }
    return OK;
}
API cuDevicePrimaryCtxRetain(void** ctx, int) { static int c; *ctx = &c; return OK; }
API cuDevicePrimaryCtxRelease_v2(int) { return OK; }
API cuCtxSetCurrent(void*) { return OK; }
API cuCtxGetCurrent(void** ctx) { static int c; *ctx = &c; return OK; }
API cuCtxGetDevice(int* d) { *d = 0; return OK; }
API cuCtxSynchronize() {
    LOCK;
    return synchronous_device();
}
API cuCtxSetFlags(unsigned) { return OK; }
API cuCtxGetStreamPriorityRange(int* lo, int* hi) { if (lo) *lo = 0; if (hi) *hi = -5; return OK; }
API cuGetErrorString(int code, const char** s) {
    static std::map<int, std::string> texts;
    LOCK;
    auto& t = texts[code];
    if (t.empty()) t = "cuda-emu error " + std::to_string(code) + (verbose() ? "" : " (CUDA_EMU_LOG=1 says why)");
    *s = t.c_str();
    return OK;
}
API cuGetErrorName(int code, const char** s) { return cuGetErrorString(code, s); }

// --- memory
API cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCK;
    *total = TOTAL_MEMORY;
    *free_bytes = TOTAL_MEMORY - std::min(g_allocated, TOTAL_MEMORY);
    return OK;
}
API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    void* m = device_alloc(bytes);
    if (!m) return OUT_OF_MEMORY;
    *p = (CUdeviceptr)m;
    return OK;
}
API cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
API cuMemFree_v2(CUdeviceptr p) { LOCK; return device_free(p); }
API cuMemFreeAsync(CUdeviceptr p, void* s) {
    LOCK;
    // Freed while capturing: the graph may still use it at replay; kept (a test-sized leak).
    if (stream_of(s)->capture) return OK;
    return device_free(p);
}
API cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    return posix_memalign(p, 4096, bytes ? bytes : 1) ? OUT_OF_MEMORY : OK;
}
API cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
API cuMemFreeHost(void* p) { std::free(p); return OK; }
API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    LOCK;
    return enqueue(s, [=] { std::memcpy((void*)dst, src, n); });
}
API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    LOCK;
    return enqueue(s, [=] { std::memcpy(dst, (const void*)src, n); });
}
API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    LOCK;
    return enqueue(s, [=] { std::memmove((void*)dst, (const void*)src, n); });
}
API cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCK;
    if (int e = synchronous(nullptr)) return e;
    std::memcpy((void*)dst, src, n);
    return OK;
}
API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCK;
    if (int e = synchronous(nullptr)) return e;
    std::memcpy(dst, (const void*)src, n);
    return OK;
}
API cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    LOCK;
    std::memmove((void*)dst, (const void*)src, n);
    return OK;
}
API cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* s) {
    LOCK;
    return enqueue(s, [=] { std::memset((void*)dst, v, n); });
}
API cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    LOCK;
    std::memset((void*)dst, v, n);
    return OK;
}
API cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void* s) {
    LOCK;
    return enqueue(s, [=] { std::fill_n((unsigned*)dst, n, v); });
}

// --- streams and events
API cuStreamCreate(void** s, unsigned) {
    LOCK;
    auto* st = new Stream;
    streams().push_back(st);
    *s = st;
    return OK;
}
API cuStreamCreateWithPriority(void** s, unsigned f, int) { return cuStreamCreate(s, f); }
API cuStreamDestroy_v2(void* s) {
    LOCK;
    auto& v = streams();
    v.erase(std::remove(v.begin(), v.end(), stream_of(s)), v.end());
    if (s) delete static_cast<Stream*>(s);
    return OK;
}
API cuStreamSynchronize(void* s) { LOCK; return synchronous(s); }
API cuStreamQuery(void* s) { LOCK; return stream_of(s)->capture ? synchronous(s) : OK; }
API cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
API cuEventCreate(void** e, unsigned) { *e = new Event; return OK; }
API cuEventDestroy_v2(void* e) { delete static_cast<Event*>(e); return OK; }
API cuEventRecord(void* e, void* s) {
    LOCK;
    auto* ev = static_cast<Event*>(e);
    if (stream_of(s)->capture) return enqueue(s, [ev] { ev->at = now_ms(); ev->recorded = true; });
    ev->at = now_ms();
    ev->recorded = true;
    return OK;
}
API cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
API cuEventSynchronize(void*) {
    LOCK;
    return synchronous_device();
}
API cuEventQuery(void*) { return OK; }
API cuEventElapsedTime_v2(float* ms, void* a, void* b) {
    auto *ea = static_cast<Event*>(a), *eb = static_cast<Event*>(b);
    if (!ea->recorded || !eb->recorded) return 600;  // CUDA_ERROR_NOT_READY
    *ms = (float)(eb->at - ea->at);
    return OK;
}
API cuEventElapsedTime(float* ms, void* a, void* b) { return cuEventElapsedTime_v2(ms, a, b); }
API cuLaunchHostFunc(void* s, void (*fn)(void*), void* data) {
    LOCK;
    return enqueue(s, [fn, data] { fn(data); });
}

// --- capture and graphs
API cuStreamBeginCapture_v2(void* s, int) {
    LOCK;
    Stream* st = stream_of(s);
    if (!s || st->capture) return INVALID_VALUE;  // the legacy stream cannot be captured
    st->capture = new Graph;
    st->invalidated = false;
    note("capture begins");
    return OK;
}
API cuStreamEndCapture(void* s, void** graph) {
    LOCK;
    Stream* st = stream_of(s);
    if (!st->capture) return INVALID_VALUE;
    Graph* g = st->capture;
    st->capture = nullptr;
    if (st->invalidated) {
        delete g;
        *graph = nullptr;
        return STREAM_CAPTURE_INVALIDATED;
    }
    note("capture ends: %zu operations", g->ops.size());
    *graph = g;
    return OK;
}
API cuStreamIsCapturing(void* s, int* status) {
    LOCK;
    Stream* st = stream_of(s);
    *status = st->capture ? (st->invalidated ? 2 : 1) : 0;
    return OK;
}
API cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    if (!graph) return INVALID_VALUE;
    *exec = graph;  // the graph's operations, replayed as they are
    return OK;
}
API cuGraphUpload(void*, void*) { return OK; }
API cuGraphLaunch(void* exec, void* s) {
    LOCK;
    if (stream_of(s)->capture) return NOT_SUPPORTED;
    for (auto& op : static_cast<Graph*>(exec)->ops) op();
    return OK;
}
API cuGraphExecDestroy(void*) { return OK; }  // the graph owns the operations
API cuGraphDestroy(void* g) { delete static_cast<Graph*>(g); return OK; }

// --- modules, functions, launches
API cuModuleLoadData(void** m, const void*) { static int mod; *m = &mod; return OK; }
API cuModuleUnload(void*) { return OK; }
API cuModuleGetFunction(void** f, void*, const char* name) {
    LOCK;
    auto it = functions().find(name);
    if (it == functions().end()) {
        note("no kernel %s", name);
        return NOT_FOUND;
    }
    *f = &it->second;
    return OK;
}
API cuFuncSetAttribute(void* f, int attr, int value) {
    LOCK;
    auto* fn = static_cast<Function*>(f);
    if (attr == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value > SMEM_OPTIN) return INVALID_VALUE;
        fn->max_dynamic_smem = value;
    }
    return OK;
}
API cuFuncGetAttribute(int* v, int attr, void* f) {
    auto* fn = static_cast<Function*>(f);
    switch (attr) {
        case 0: *v = 1024; break;  // max threads per block
        case 4: *v = 64; break;    // registers
        case 8: *v = fn->max_dynamic_smem; break;
        default: *v = 0;
    }
    return OK;
}
API cuFuncSetCacheConfig(void*, int) { return OK; }
API cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void*, int block, size_t smem) {
    *n = std::max(1, std::min(2048 / std::max(block, 1), smem ? (int)(233472 / smem) : 32));
    return OK;
}
API cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, void* f, int block, size_t smem, unsigned) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, block, smem);
}
API cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                   void* s, void** params, void** extra) {
    LOCK;
    if (extra) return NOT_SUPPORTED;
    return launch(f, gx, gy, gz, bx, by, bz, smem, s, params, false);
}
API cuLaunchCooperativeKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              unsigned smem, void* s, void** params) {
    LOCK;
    return launch(f, gx, gy, gz, bx, by, bz, smem, s, params, true);
}

// --- cuBLAS (libcublas.so is this library): the strided batched SGEMM coseg's matrix products use,
// column-major as cuBLAS; f64 sums rounded once (cuBLAS's own order is unspecified). In the TF32
// math mode (CUBLAS_TF32_TENSOR_OP_MATH) the operands are rounded to TF32 first, as the tensor
// cores read them (cvt.rna, emu_tc.h).
namespace {
struct Blas {
    void* stream = nullptr;
    int math = 0;
};
}  // namespace
API cublasCreate_v2(void** h) { *h = new Blas; return 0; }
API cublasDestroy_v2(void* h) { delete static_cast<Blas*>(h); return 0; }
API cublasSetStream_v2(void* h, void* s) { static_cast<Blas*>(h)->stream = s; return 0; }
API cublasGetStream_v2(void* h, void** s) { *s = static_cast<Blas*>(h)->stream; return 0; }
API cublasSetMathMode(void* h, int m) { static_cast<Blas*>(h)->math = m; return 0; }
API cublasGetMathMode(void* h, int* m) { *m = static_cast<Blas*>(h)->math; return 0; }
API cublasSetWorkspace_v2(void*, void*, size_t) { return 0; }
API cublasSgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda,
                              long long sa, const float* B, int ldb, long long sb, const float* beta, float* C, int ldc,
                              long long sc, int batch) {
    LOCK;
    const float al = *alpha, be = *beta;
    const bool tf32 = (static_cast<Blas*>(h)->math & 0xf) == 3;
    auto op = [tf32](float v) { return tf32 ? emu_tf32_val(emu_cvt_rna_tf32_f32(v)) : (double)v; };
    return enqueue(static_cast<Blas*>(h)->stream, [=] {
        for (int i = 0; i < batch; ++i) {
            const float *a = A + i * sa, *b = B + i * sb;
            float* c = C + i * sc;
            for (int col = 0; col < n; ++col)
                for (int row = 0; row < m; ++row) {
                    double s = 0;
                    for (int p = 0; p < k; ++p) {
                        double x = op(ta ? a[p + (long)row * lda] : a[row + (long)p * lda]);
                        double y = op(tb ? b[col + (long)p * ldb] : b[p + (long)col * ldb]);
                        s += x * y;
                    }
                    float& out = c[row + (long)col * ldc];
                    out = (float)(al * s + (be == 0.0f ? 0.0 : be * (double)out));
                }
        }
    });
}
API cublasSgemm_v2(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda,
                   const float* B, int ldb, const float* beta, float* C, int ldc) {
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// --- NVRTC (libnvrtc.so is this library): "compiles" a module to a text the driver ignores (the
// kernels are already here, looked up by name).
namespace {
struct Program {
    std::string text;
};
}  // namespace
API nvrtcCreateProgram(void** p, const char*, const char*, int, const char* const*, const char* const*) {
    *p = new Program{"// cuda-emu: kernels compiled into the emulator\n"};
    return 0;
}
API nvrtcCompileProgram(void*, int, const char* const*) { return 0; }
API nvrtcGetPTXSize(void* p, size_t* n) { *n = static_cast<Program*>(p)->text.size() + 1; return 0; }
API nvrtcGetPTX(void* p, char* out) {
    auto& t = static_cast<Program*>(p)->text;
    std::memcpy(out, t.c_str(), t.size() + 1);
    return 0;
}
API nvrtcGetProgramLogSize(void*, size_t* n) { *n = 1; return 0; }
API nvrtcGetProgramLog(void*, char* out) { *out = 0; return 0; }
API nvrtcDestroyProgram(void** p) { delete static_cast<Program*>(*p); *p = nullptr; return 0; }
API nvrtcVersion(int* major, int* minor) { *major = 13; *minor = 0; return 0; }
