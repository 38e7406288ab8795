"""Framework overhead of finished runs: share of round wall time outside the devices' work.

Reads rounds.jsonl (per participant `handler_wall_s` and `train_wall_s`, per round
`round_wall_s` and `eval_wall_s`) and prints, per run, the share spent outside device handlers
and evaluation (Flower/Ray messaging, server aggregation: goal <= 5%, must <= 10%) and the
share spent in handlers outside the optimizer loop (model slicing, LoRA attach, loss probe).

    python analysis/overhead.py RUN_DIR [RUN_DIR ...] [--workers 2] [--skip-final]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedspine.report.record import read_rounds
from fedspine.report.summary import framework_overhead_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--skip-final",
        action="store_true",
        help="leave out the final pruning round (many short device rounds)",
    )
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        rows = [r for r in read_rounds(run_dir) if not (args.skip_final and r.get("final_round"))]
        shares = framework_overhead_share(rows, args.workers)
        print(json.dumps({"run": str(run_dir), "rounds": len(rows), **shares}))


if __name__ == "__main__":
    main()
