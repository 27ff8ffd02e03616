"""Optional: times pydensecrf on the exact inputs of benches/crf.rs, for a side-by-side figure.

Not run by CI or `cargo bench`. Needs numpy, pillow and pydensecrf2, e.g. in a throwaway venv:

    python3 -m venv /tmp/pdc && /tmp/pdc/bin/pip install pydensecrf2 numpy pillow
    COSEG_CRF_BENCH_INPUTS=target/crf_inputs cargo bench --bench crf -- crf_refine   # writes inputs
    OMP_NUM_THREADS=1 taskset -c 0 /tmp/pdc/bin/python benches/pydensecrf_time.py target/crf_inputs

Each case (NAME_image.png, NAME_prob.f32: lesion probability, little-endian f32, row-major) is
refined as `coseg::crf::refine` does with the default CrfParams: unaries from the softmax,
Gaussian (sxy 3, compat 3) and bilateral (sxy 80, srgb 13, compat 10) kernels, 5 iterations,
everything from building the CRF to the marginals timed. Prints the median and the quartiles
of many runs, and the median CPU time (pydensecrf is single-threaded; CPU time is less
bothered by other processes on a loaded machine).
"""
import glob
import os
import sys
import time

import numpy as np
from PIL import Image
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

GAUSS_SXY, GAUSS_COMPAT, BIL_SXY, BIL_SRGB, BIL_COMPAT, ITERS = 3, 3, 80, 13, 10, 5


def refine(rgb, prob):
    h, w = prob.shape
    sm = np.stack([1.0 - prob, prob]).astype(np.float32)
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(sm)))
    d.addPairwiseGaussian(sxy=GAUSS_SXY, compat=GAUSS_COMPAT)
    d.addPairwiseBilateral(sxy=BIL_SXY, srgb=BIL_SRGB, rgbim=rgb, compat=BIL_COMPAT)
    return np.array(d.inference(ITERS), dtype=np.float32).reshape(2, h, w)[1]


def time_case(rgb, prob, budget_s=3.0, min_runs=20):
    refine(rgb, prob)  # warm-up
    wall, cpu = [], []
    start = time.perf_counter()
    while len(wall) < min_runs or time.perf_counter() - start < budget_s:
        t0, c0 = time.perf_counter(), time.process_time()
        refine(rgb, prob)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return np.array(wall) * 1e3, np.array(cpu) * 1e3


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "target/crf_inputs"
    for image_path in sorted(glob.glob(os.path.join(folder, "*_image.png"))):
        name = os.path.basename(image_path)[: -len("_image.png")]
        grey = np.array(Image.open(image_path))
        rgb = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        prob = np.fromfile(os.path.join(folder, f"{name}_prob.f32"), dtype="<f4").reshape(grey.shape)
        ms, cpu_ms = time_case(rgb, prob)
        q25, q50, q75 = np.percentile(ms, [25, 50, 75])
        print(
            f"pydensecrf {name:>20}: median {q50:7.2f} ms  (q25 {q25:.2f}, q75 {q75:.2f}, "
            f"{len(ms)} runs; CPU time median {np.median(cpu_ms):.2f} ms)"
        )


if __name__ == "__main__":
    main()
