"""`ffebm bench solvers` is a click group for the main CLI; its report renders (no timing here)."""

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
