"""`ffebm bench solvers` is a click group for the main CLI; its report renders (no timing here)."""

import pytest
from click.testing import CliRunner

from ffebm_sim.bench import bench, markdown


def test_bench_group_has_solvers():
    result = CliRunner().invoke(bench, ["solvers", "--help"])
    assert result.exit_code == 0
    assert "--quick" in result.output and "--json" in result.output


def _report(**extra) -> dict:
    """A made-up quick report (no timing here): what markdown() renders."""
    r = {"naive_pyspice_ep_s": 0.5, "ngspice_ep_s": 0.001, "ngspice_analysis_ep_s": 0.0005, "reference_ep_s": 0.01,
         "workers2_speedup": 1.8, "rss_growth_mb_20k": None, "digits_epoch_2workers_s": 5.0,
         "speedup_vs_naive": 500.0, "overhead_vs_ngspice": 2.0, "reference_speedup": 0.1}
    return {"machine": {"cpu": "cpu", "cores": 2, "ram_gb": 1, "ngspice": "ngspice-39", "torch": "2",
                        "python": "3", "loadavg_start": [0.1, 0, 0]},
            "quick": True, "block": "block_small", "layers": [64, 32, 10], "batch": 32, "chunk": 16,
            "method": "auto", "results": r, "naive_max_abs_dv_volts": 1e-13, "methods": [], **extra}


def test_markdown_report_names_every_ratio():
    text = markdown(_report())
    for word in ("speedup_vs_naive", "overhead_vs_ngspice", "reference_speedup", "workers2_speedup",
                 "rss_growth_mb_20k", "skipped (--quick)", "ngspice-39"):
        assert word in text


def test_targets_table_marks_what_is_missed():
    from ffebm_sim.bench import TARGETS, _met
    assert _met(1.5, 1.3, "max") is False and _met(400.0, 300.0, "min") is True and _met(None, 1.0, "min") is None
    assert set(TARGETS) >= {"speedup_vs_naive", "overhead_vs_ngspice", "workers2_speedup", "reference_speedup"}
    text = markdown(_report(targets={"overhead_vs_ngspice": {"target": "<= 1.3", "value": 2.0, "met": False},
                                     "speedup_vs_naive": {"target": ">= 300", "value": 500.0, "met": True}}))
    assert "| overhead_vs_ngspice | <= 1.3 | 2 | **no** |" in text
    assert "| speedup_vs_naive | >= 300 | 500 | yes |" in text


@pytest.mark.parametrize("quick", [True, False])
def test_progress_counts_every_step_once(monkeypatch, quick):
    """The progress line's total is the number of steps the run takes (the reference-solver
    section is one step, whatever it logs), so it never reads '14/13 steps'."""
    import types

    import ffebm_sim.bench as b
    import ffebm_sim.bench_reference as br
    import ffebm_sim.model as model
    import ffebm_sim.progress as progress
    import ffebm_sim.spec as spec
    bars = []

    class Bar(progress.Progress):
        def __init__(self, total, *args, **kwargs):
            super().__init__(total, *args, interval=0, **kwargs)
            bars.append(self)
    fig = {k: 1.0 for k in ("ngspice_ep_s", "ngspice_analysis_ep_s", "reference_ep_s", "workers2_ep_s",
                            "workers2_speedup")}
    block = types.SimpleNamespace(name="x", layer_sizes=(2, 1))
    monkeypatch.setattr(progress, "Progress", Bar)
    monkeypatch.setattr(spec, "load_block", lambda path: block)
    monkeypatch.setattr(model, "build_model", lambda *a, **k: types.SimpleNamespace(energy_blocks=[]))
    monkeypatch.setattr(b, "drn_block", lambda: block)
    monkeypatch.setattr(b, "machine", lambda: {})
    monkeypatch.setattr(b, "naive_ep_s", lambda *a: (1.0, 0.0))
    monkeypatch.setattr(b, "block_figures", lambda *a, **k: dict(fig))
    monkeypatch.setattr(b, "rss_growth_mb", lambda *a: {"rss_growth_mb": 0.0})
    monkeypatch.setattr(b, "digits_epoch_s", lambda *a: {"seconds": 1.0})
    monkeypatch.setattr(b, "epoch_s", lambda *a, **k: {"seconds": 1.0})
    monkeypatch.setattr(b, "chunk_costs", lambda *a, **k: {})
    monkeypatch.setattr(b, "tran_costs", lambda *a, **k: {})
    monkeypatch.setattr(b, "method_table", lambda *a, **k: [])

    def reference(quick, log):
        for k in range(5):
            log(f"reference part {k}")
        return {}
    monkeypatch.setattr(br, "run_reference", reference)
    messages = []
    b.run_solvers(quick, log=messages.append)
    bar, = bars
    assert bar.total == len(b.solver_steps(quick)) == bar.done
    assert len(messages) == bar.total + 5


def test_markdown_shows_both_ways_of_giving_a_tran_job_its_values():
    cost = {"block": "block_small", "samples": 16, "alter_ms": 1.3, "tran_command_ms": 3.6, "analysis_ms": 3.0,
            "read_destroy_ms": 0.25, "external_values_ms": 0.04, "external_tran_command_ms": 3.1,
            "external_read_destroy_ms": 0.23}
    text = markdown(_report(tran_costs=[cost]))
    assert "| block_small | 16 | PWL + alter: 1.30 | 3.60 | 3.00 | 0.25 | 1.72 |" in text
    assert "| block_small | 16 | EXTERNAL: 0.04 | 3.10 | 3.00 | 0.23 | 1.12 |" in text
    without = {k: v for k, v in cost.items() if not k.startswith("external_")}
    assert "| 16 | EXTERNAL:" not in markdown(_report(tran_costs=[without]))
