#!/usr/bin/env python3
"""Writes the golden file of tests/torchvision_parity.rs: torchvision's dilated ResNet-101
features of the DeepLesion sample's crops, under weights that both sides compute from a formula.

ImageNet weights cannot be fetched on the machines coseg is built and tested on, and 170 MB of
random weights is too much to commit; so every tensor of torchvision's state dict is filled from
its name and element index (`formula_tensor` below, mirrored in tests/torchvision_parity.rs), and
only the result, float32 [N, 2048], is committed. Run by someone with torch (pip install torch
torchvision numpy):

    cargo run --release -- crops --data ../shared/data/deeplesion-sample --out /tmp/crops.npy
    python3 scripts/torchvision_golden.py /tmp/crops.npy tests/data/torchvision_r101_dilated_formula.npy

The model is torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True]) in
eval mode; the features are layer4's global average, as `coseg embed` writes them.
"""
import argparse

import numpy as np
import torch
import torchvision

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(name: str, n: int) -> np.ndarray:
    """n values in [-1, 1), each exact in float32: splitmix64 of fnv1a64(name) + (i + 1) * golden."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a64(name)) + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0


def formula_tensor(name: str, shape) -> np.ndarray:
    """Convolutions: uniform with variance 1/fan_in; batch norm: scale and variance in [0.5, 1],
    shift and mean in [-0.1, 0.1]. Computed in float64, rounded once to float32."""
    n = int(np.prod(shape))
    u = uniform(name, n)
    if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
        v = 0.75 + 0.25 * u
    elif name.endswith("running_mean") or name.endswith(".bias"):
        v = 0.1 * u
    else:
        fan_in = int(np.prod(shape[1:]))
        v = u * np.sqrt(3.0 / fan_in)
    return v.astype(np.float32).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crops")
    ap.add_argument("out")
    a = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net = torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True])
    state = {
        k: torch.from_numpy(formula_tensor(k, tuple(v.shape)))
        for k, v in net.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in missing), missing
    net.eval()
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    crops = np.load(a.crops).astype(np.float32)
    with torch.no_grad():
        feats = trunk(torch.from_numpy(crops)).mean(dim=(2, 3)).numpy().astype(np.float32)
    np.save(a.out, feats)
    print(f"{a.out}: {feats.shape}, mean |f| {np.abs(feats).mean():.4f}, max {np.abs(feats).max():.4f}")


if __name__ == "__main__":
    main()
