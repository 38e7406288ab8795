"""The server's masked-SVD aggregation at this tree against a git ref's, side by side.

Times `aggregate_masked_svd` (FedSpine's residual rule) of one process on uploads shaped like
the default preset's (MiniLM: 12 layers x q, k, v, o, up, down; half the devices pruned to
50%, the others to 25%, ranks 2/4/8), for a regular round (8 uploads) and a catch-up round
(69 uploads), and prints each ref's best of three, the ratio and the largest difference of the
per-coordinate means (the re-factorisation is randomized, so its factors differ by design).

    python bench/aggregation_speed.py --ref 4f707c5 [--uploads 8,69] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedspine.lora import aggregation as this_tree
from fedspine.lora.factors import LoraFactors

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"q": (384, 384), "k": (384, 384), "v": (384, 384), "o": (384, 384)}
LAYER |= {"up": (1536, 384), "down": (384, 1536)}
SHAPES = {f"{layer}.{name}": shape for layer in range(12) for name, shape in LAYER.items()}


def module_at(ref: str, folder: Path):
    """fedspine/lora/aggregation.py as it was at `ref`, imported under another name."""
    path = folder / "aggregation_at_ref.py"
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:src/fedspine/lora/aggregation.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("aggregation_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _kept(size: int, share: float, generator: torch.Generator) -> torch.Tensor:
    return torch.sort(torch.randperm(size, generator=generator)[: int(size * share)]).values


def uploads(count: int, module) -> list:
    """`count` uploads with pruned heads (q, k, v rows; o cols) and FFN channels (up rows,
    down cols), each with the down-link it received at its round-start coordinates."""
    g = torch.Generator().manual_seed(0)
    made = []
    for device in range(count):
        share = 0.5 if device % 2 else 0.75
        heads, channels = _kept(384, share, g), _kept(1536, share, g)
        rank = (2, 4, 8)[device % 3]
        rows, cols, factors, received = {}, {}, {}, {}
        for name, (out, width) in SHAPES.items():
            kind = name.split(".")[1]
            rows[name] = heads if kind in "qkv" else channels if kind == "up" else None
            cols[name] = heads if kind == "o" else channels if kind == "down" else None
            out_kept = out if rows[name] is None else len(rows[name])
            in_kept = width if cols[name] is None else len(cols[name])
            for store in (factors, received):
                store[name] = LoraFactors(
                    A=torch.randn(rank, in_kept, generator=g) * 0.02,
                    B=torch.randn(out_kept, rank, generator=g) * 0.02,
                )
        made.append(module.LoraUpload(factors, rows, cols, 100, {}, received, rows, cols))
    return made


def mean_difference(before, batch: dict, previous: dict, name: str) -> float:
    """Largest |difference| of one module's per-coordinate mean between the two refs."""
    weights = [100.0] * len(batch["after"])
    fallback = previous[name].delta()
    means = [
        module._masked_mean(batch[label], weights, name, fallback, 2.0, True)
        for label, module in (("before", before), ("after", this_tree))
    ]
    return float((means[0] - means[1]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git ref of the 'before' aggregation")
    parser.add_argument("--uploads", default="8,69")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    previous = {
        name: LoraFactors(
            A=torch.randn(8, i, generator=g) * 0.02, B=torch.randn(o, 8, generator=g) * 0.02
        )
        for name, (o, i) in SHAPES.items()
    }
    with tempfile.TemporaryDirectory() as folder:
        before = module_at(args.ref, Path(folder))
        for count in (int(c) for c in args.uploads.split(",")):
            times: dict[str, list[float]] = {"before": [], "after": []}
            batch = {"before": uploads(count, before), "after": uploads(count, this_tree)}
            for _ in range(3):  # alternating, so drift hits both alike
                for label, module in (("before", before), ("after", this_tree)):
                    start = time.perf_counter()
                    module.aggregate_masked_svd(
                        batch[label], SHAPES, 8, 2.0, previous=previous, keep_residual=True
                    )
                    times[label].append(time.perf_counter() - start)
            diff = max(mean_difference(before, batch, previous, name) for name in list(SHAPES)[:6])
            old, new = min(times["before"]), min(times["after"])
            print(
                f"{count} uploads: {args.ref} {old:.3f} s, this tree {new:.3f} s, "
                f"ratio {new / old:.3f}; largest difference of the means {diff:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
