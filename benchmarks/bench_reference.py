"""Reference-solver benchmark: writes benchmarks/results/reference_solver.{json,md}.

    .venv/bin/python benchmarks/bench_reference.py [--quick] [--baseline TREE]

The layered reference against the dense Newton it replaced (ffebm_sim/bench_reference.py);
``--baseline TREE``: also the reference of another source tree, e.g. the commit before:
``git archive 2dc5482 | tar -x -C /tmp/before``.
"""

import json
import sys
from pathlib import Path

from ffebm_sim.bench import machine
from ffebm_sim.bench_reference import markdown, run_reference


def main(argv):
    quick = "--quick" in argv
    tree = argv[argv.index("--baseline") + 1] if "--baseline" in argv else None
    report = {"machine": machine(),
              **run_reference(quick, log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True),
                              baseline_tree=tree)}
    import os
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    out = Path(__file__).resolve().parent / "results"
    (out / "reference_solver.json").write_text(json.dumps(report, indent=1) + "\n")
    m = report["machine"]
    head = [f"# Reference solver benchmark", "",
            f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}. Load average (1 min) at start "
            f"{m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f} (other work slows every figure).", ""]
    (out / "reference_solver.md").write_text("\n".join(head + markdown(report)
                                                      + ["Reproduce: `python benchmarks/bench_reference.py"
                                                         + (" --quick" if quick else "")
                                                         + (" --baseline TREE" if tree else "") + "`.", ""]))
    print(out / "reference_solver.md")


if __name__ == "__main__":
    main(sys.argv[1:])
