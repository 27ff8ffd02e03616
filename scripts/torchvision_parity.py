#!/usr/bin/env python3
"""Checks `coseg embed` against torchvision's dilated ResNet-101 on the same crops.

For ImageNet weights, which the machines coseg is built on cannot download, a user with torch
runs it (pip install torch torchvision safetensors numpy). The same comparison under weights
computed from a formula runs in CI (tests/torchvision_parity.rs, golden output from
scripts/torchvision_golden.py):

    python3 -c 'import torch, torchvision, safetensors.torch as s; \
        s.save_file(torchvision.models.resnet101(weights="IMAGENET1K_V1").state_dict(), "resnet101.safetensors")'
    coseg crops --data DIR --out crops.npy
    coseg embed --weights resnet101.safetensors --data DIR --out emb.npy
    python3 scripts/torchvision_parity.py resnet101.safetensors crops.npy emb.npy

It feeds crops.npy (the network's input, exactly as coseg feeds it) to
torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True]) in eval mode,
global-average-pools layer4 and compares with emb.npy. Exit status 1 when the relative error
||ours - torch|| / ||torch|| exceeds --tol (default 1e-5, float32 accuracy).
"""
import argparse
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("crops")
    ap.add_argument("embeddings")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()

    net = torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True])
    missing, unexpected = net.load_state_dict(load_file(a.weights), strict=False)
    if missing:
        sys.exit(f"weights lack {missing[:5]}")
    net.eval()
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)

    crops = np.load(a.crops).astype(np.float32)
    ours = np.load(a.embeddings).astype(np.float64)
    if ours.shape != (crops.shape[0], 2048):
        sys.exit(f"embeddings {ours.shape} do not fit crops {crops.shape}")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    feats = []
    with torch.no_grad():
        for i in range(0, len(crops), a.batch):
            f = trunk(torch.from_numpy(crops[i : i + a.batch]))
            feats.append(f.mean(dim=(2, 3)).double().numpy())
    theirs = np.concatenate(feats)
    rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    worst = np.abs(ours - theirs).max()
    print(f"{len(crops)} crops: relative error {rel:.3e}, max abs difference {worst:.3e}")
    sys.exit(0 if rel <= a.tol else 1)


if __name__ == "__main__":
    main()
