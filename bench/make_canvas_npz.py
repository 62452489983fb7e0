"""Write the 28×28 benchmark data set: scikit-learn's digits on a 28×28 canvas, as an npz with
`images` [N, 28, 28] uint8 and `labels` [N] int64 (the npz layout of docs/user-guide.md).

    python bench/make_canvas_npz.py --out bench/data/canvas.npz [--mode upscale|centre]
                                    [--copies 4] [--seed 0]

`upscale` stretches each 8×8 digit to 24×24 (linear interpolation) inside a 2-pixel margin;
`centre` places it unscaled in the middle. `--copies N` adds N−1 copies shifted by up to ±2 pixels.
The output depends only on the arguments (same arguments → byte-identical file). One JSON line on
stdout names the file, its shape and the SHA-256 of its bytes.

Use it with `--set data.dataset=npz --set data.path=<out>`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fixtures():
    # tests/fixtures.py is the one definition of the canvas data; load it by path so the script
    # works from any directory without making tests/ a package.
    spec = importlib.util.spec_from_file_location("mixvae_test_fixtures", ROOT / "tests" / "fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "data" / "canvas.npz")
    parser.add_argument("--mode", choices=("upscale", "centre"), default="upscale")
    parser.add_argument("--copies", type=int, default=1, help="1 = the 1 797 digits once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shifts of the copies")
    args = parser.parse_args()
    if args.copies < 1:
        parser.error("--copies must be ≥ 1")

    path = _fixtures().write_canvas_npz(args.out, mode=args.mode, copies=args.copies, seed=args.seed)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    n = 1797 * args.copies
    print(json.dumps({"file": str(path), "images": [n, 28, 28], "dtype": "uint8",
                      "mode": args.mode, "copies": args.copies, "seed": args.seed,
                      "sha256": digest}))


if __name__ == "__main__":
    main()
