"""Sanity experiment for the hardware update rules (seconds): noisy linear regression on devices.

    .venv/bin/python benchmarks/hardware_sanity.py [--steps 3000] [--seeds 0 1 2] [--json OUT.json]

Prints a Markdown table of the RMS distance to the true minimum (fraction of
the device range, last quarter of the run; mean over seeds) per device preset
and rule. See ffebm_sim/hardware/sanity.py for the problem and
docs/hardware.md for what to expect.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ffebm_sim.hardware import RULES
from ffebm_sim.hardware.sanity import regression_sanity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--presets", nargs="+", default=["ideal", "reram", "ecram"])
    ap.add_argument("--json", type=Path, default=None, help="also write the per-seed results here")
    args = ap.parse_args()
    rows, t0 = [], time.perf_counter()
    print(f"| preset | {' | '.join(RULES)} |\n|---|{'---|' * len(RULES)}")
    for preset in args.presets:
        cells = []
        for rule in RULES:
            res = [regression_sanity(rule, preset, steps=args.steps, seed=s) for s in args.seeds]
            rows += [r.as_dict() | {"seed": s} for r, s in zip(res, args.seeds)]
            cells.append(f"{sum(r.rms_error for r in res) / len(res):.4f}")
        print(f"| {preset} | {' | '.join(cells)} |")
    start = rows[0]["rms_start"] if rows else float("nan")
    print(f"\nRMS error at the start (seed {args.seeds[0]}): {start:.3f} of the range; {time.perf_counter() - t0:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
