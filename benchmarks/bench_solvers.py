"""Solver benchmark: writes benchmarks/results/solvers.json and solvers.md.

    .venv/bin/python benchmarks/bench_solvers.py [--quick]

The same measurements as ``ffebm bench solvers`` (see ffebm_sim/bench.py).
"""

import sys
from pathlib import Path

from ffebm_sim.bench import run_solvers, write_results


def main(argv):
    quick = "--quick" in argv
    report = run_solvers(quick, log=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    report["command"] = "python benchmarks/bench_solvers.py" + (" --quick" if quick else "")
    paths = write_results(report, Path(__file__).resolve().parent / "results")
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    main(sys.argv[1:])
