// The check scripts/kernel-emu/run.sh builds: kernels/nd.cu's transpose_f32 (the tiled kernel
// backend::cuda::nd::copy runs for walks that transpose a matrix or a batch of them) as the
// wrapper launches it, grid (ceil(C/32), ceil(R/32), B) of 256 threads, on shapes off the 32 x 32
// tiles (the weight reorders' C x 9 and 4608 x K among them) with base offsets: y bit for bit
// the host's y[oy + (b*C + c)*R + r] = x[ox + (b*R + r)*C + c], and the values before oy and
// past the end still NaN.
#include "emu.h"
#ifndef ND_KERNELS  // mutants.sh points this at a broken copy
#define ND_KERNELS "../../kernels/nd.cu"
#endif
#include ND_KERNELS
#include <cstdio>
#include <cstring>
#include <vector>

int main() {
    // B, R, C, ox, oy
    const int shapes[][5] = {{1, 9, 7, 0, 0}, {5, 7, 9, 0, 0}, {3, 40, 33, 5, 2}, {2, 70, 2, 1, 3}, {1, 300, 20, 0, 7}, {2, 33, 65, 4, 4}, {1, 2, 64, 0, 0}};
    bool ok = true;
    for (auto& s : shapes) {
        const int B = s[0], R = s[1], C = s[2], ox = s[3], oy = s[4], n = B * R * C;
        std::vector<float> x(n + ox), y(n + oy + 3, NAN);
        for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 2654435761u) % 1000) * 0.25f - 100.0f;
        launch({(unsigned)((C + 31) / 32), (unsigned)((R + 31) / 32), (unsigned)B}, 256, [&] { transpose_f32(x.data(), y.data(), R, C, ox, oy); });
        int bad = 0;
        for (int b = 0; b < B; ++b)
            for (int r = 0; r < R; ++r)
                for (int c = 0; c < C; ++c) {
                    const float want = x[ox + ((size_t)b * R + r) * C + c], got = y[oy + ((size_t)b * C + c) * R + r];
                    bad += std::memcmp(&want, &got, 4) != 0;
                }
        for (int i = 0; i < oy; ++i) bad += !std::isnan(y[i]);
        for (int i = 0; i < 3; ++i) bad += !std::isnan(y[oy + n + i]);
        printf("transpose B=%d R=%d C=%d ox=%d oy=%d: %d wrong\n", B, R, C, ox, oy, bad);
        ok = ok && bad == 0;
    }
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
