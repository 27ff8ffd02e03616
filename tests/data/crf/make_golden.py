"""Regenerates the pydensecrf golden outputs that tests/crf_pydensecrf.rs compares against.

Needs numpy, pillow and pydensecrf (pip install pydensecrf2: the same densecrf C++ code, with
wheels). Not run by CI: its outputs are committed next to it.

    python tests/data/crf/make_golden.py [SHARED_DIR]

Cases (each: NAME_image.png, NAME_prob.png, NAME_q1.f32 = lesion marginal, little-endian f32,
row-major, after pydensecrf's usual call with the defaults of `coseg crf`):
- rgb:  48x40 random smooth RGB image and probability map (non-square: catches x/y swaps);
- grey: 40x48 random smooth grey image, passed to pydensecrf as RGB with r = g = b;
- ct:   a 128x128 DeepLesion crop around a lesion (HU window -175..275 -> 0..255) with a soft
        ellipse prior from its RECIST diameters, confident (steep) and 1.2x the lesion's size
        (needs SHARED_DIR/data/deeplesion-sample). A loose prior (steepness 4, 1.3x) is wiped
        out entirely by the defaults' appearance kernel on a 128x128 crop.
"""
import os
import sys

import numpy as np
from PIL import Image
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

HERE = os.path.dirname(os.path.abspath(__file__))
GAUSS_SXY, GAUSS_COMPAT, BIL_SXY, BIL_SRGB, BIL_COMPAT, ITERS = 3, 3, 80, 13, 10, 5


def smooth_field(rng, h, w, blobs=5):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = np.zeros((h, w))
    for _ in range(blobs):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(3, max(w, h) / 3)
        f += rng.uniform(-1, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return f


def run_crf(rgb, prob8):
    h, w = prob8.shape
    p = prob8.astype(np.float32) / 255.0
    sm = np.stack([1.0 - p, p]).astype(np.float32)
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(sm)))
    d.addPairwiseGaussian(sxy=GAUSS_SXY, compat=GAUSS_COMPAT)
    d.addPairwiseBilateral(sxy=BIL_SXY, srgb=BIL_SRGB, rgbim=np.ascontiguousarray(rgb), compat=BIL_COMPAT)
    q = np.array(d.inference(ITERS), dtype=np.float32).reshape(2, h, w)
    return q[1]


def save(name, image, prob8):
    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    Image.fromarray(image).save(os.path.join(HERE, f"{name}_image.png"))
    Image.fromarray(prob8).save(os.path.join(HERE, f"{name}_prob.png"))
    q1 = run_crf(rgb, prob8)
    q1.astype("<f4").tofile(os.path.join(HERE, f"{name}_q1.f32"))
    print(name, image.shape, "lesion pixels before", int((prob8 > 127).sum()), "after", int((q1 > 0.5).sum()))


def to_u8(f):
    f = (f - f.min()) / (f.max() - f.min() + 1e-12)
    return np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)


def synthetic(rng, h, w, channels):
    img = np.stack([to_u8(smooth_field(rng, h, w) + rng.normal(0, 0.05, (h, w))) for _ in range(channels)], axis=2)
    prob = 1.0 / (1.0 + np.exp(-3.0 * smooth_field(rng, h, w) - rng.normal(0, 0.5, (h, w))))
    return (img if channels == 3 else img[:, :, 0]), np.clip(prob * 255 + 0.5, 0, 255).astype(np.uint8)


def ct_case(shared, steep=16.0, reach=1.2):
    import csv
    base = os.path.join(shared, "data", "deeplesion-sample")
    with open(os.path.join(base, "DL_info.csv")) as fh:
        row = next(csv.DictReader(fh))
    name = row["File_name"]
    folder, slice_file = name[: name.rfind("_")], name[name.rfind("_") + 1 :]
    hu = np.array(Image.open(os.path.join(base, "Images_png", folder, slice_file)), dtype=np.int32) - 32768
    lo, hi = -175, 275
    win = np.clip((hu - lo) * 255.0 / (hi - lo) + 0.5, 0, 255).astype(np.uint8)
    m = [float(v) for v in row["Measurement_coordinates"].split(",")]
    (x1, y1, x2, y2, x3, y3, x4, y4) = m
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0, y0 = int(round(cx)) - 64, int(round(cy)) - 64
    crop = win[y0 : y0 + 128, x0 : x0 + 128]
    a = np.hypot(x2 - x1, y2 - y1) / 2
    b = np.hypot(x4 - x3, y4 - y3) / 2
    th = np.arctan2(y2 - y1, x2 - x1)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float64)
    dx, dy = xx + x0 - cx, yy + y0 - cy
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    r = np.sqrt(u * u + v * v)
    prob = 1.0 / (1.0 + np.exp(steep * (r - reach)))
    return crop, np.clip(prob * 255 + 0.5, 0, 255).astype(np.uint8)


def main():
    rng = np.random.default_rng(2011)
    save("rgb", *synthetic(rng, 40, 48, 3))
    save("grey", *synthetic(rng, 48, 40, 1))
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "..", "shared")
    save("ct", *ct_case(shared))


if __name__ == "__main__":
    main()
