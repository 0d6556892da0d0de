#!/usr/bin/env python3
"""Pixel difference of two images of the same size (e.g. the same `kiln image` run on the
GPU and on the CPU): max and mean absolute difference in 8-bit levels, and the share of
values more than 2 levels apart. Exit status 1 when the max exceeds --max-levels or the
mean exceeds --mean-levels. Needs Pillow and numpy.

    python3 scripts/compare_images.py gpu.png cpu.png --max-levels 8 --mean-levels 1
"""
import argparse
import json
import sys

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--max-levels", type=float, default=8.0)
    ap.add_argument("--mean-levels", type=float, default=1.0)
    args = ap.parse_args()
    a = np.asarray(Image.open(args.a).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(args.b).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        print(json.dumps({"ok": False, "reason": f"sizes differ: {a.shape} vs {b.shape}"}))
        return 1
    diff = np.abs(a - b)
    result = {
        "size": [int(a.shape[1]), int(a.shape[0])],
        "max_levels": int(diff.max()),
        "mean_levels": float(diff.mean()),
        "share_over_2_levels": float((diff > 2).mean()),
        "pixel_std_levels": float(b.std()),
    }
    result["ok"] = result["max_levels"] <= args.max_levels and result["mean_levels"] <= args.mean_levels
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
