"""Operating points that do not converge: the retries that rescue them, the error that
names what still fails, and the run's stop/skip policy."""

import json
import shutil
import subprocess

import pytest
import torch

from conftest import make_block, random_inputs
from ffebm_sim.backends import Equilibrium, Nudge
from ffebm_sim.backends.jobs import HOMOTOPIES, WARM_START
from ffebm_sim.backends.ngspice import NgspiceBackend
from ffebm_sim.backends.reference import ReferenceBackend
from ffebm_sim.cli import main
from ffebm_sim.ep import SolveFailed
from ffebm_sim.failures import FailurePolicy, RunStopped
from ffebm_sim.model import build_model


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """A fault directory: ``put(n)`` makes the next n ngspice ``op`` s report no convergence."""
    where = tmp_path / "faults"
    where.mkdir()
    monkeypatch.setenv("FFEBM_FAULT_DIR", str(where))

    def put(n, always=False):
        for i in range(n):
            (where / f"noconv-{i:03d}").touch()
        if always:
            (where / "noconv-always").touch()
    return put


# Failures in a row before the first sample converges -> what converged it.
RESCUES = [(1, HOMOTOPIES[0][0]), (2, HOMOTOPIES[1][0]), (3, WARM_START)]


@pytest.mark.parametrize("failed_tries,rescuer", RESCUES)
@pytest.mark.parametrize("nudged", [False, True], ids=["free", "nudged"])
def test_retries_rescue_a_failed_operating_point(faults, failed_tries, rescuer, nudged):
    c = make_block((6, 5, 3), kind="double", seed=4, bias=True)
    u = random_inputs(c, 5, seed=2)
    nudge = Nudge(currents_a=torch.full((5, 3), 2e-6, dtype=torch.float64)) if nudged else None
    ref = ReferenceBackend().solve(c, u, nudge)
    faults(failed_tries)
    be = NgspiceBackend(reduced=False, method="op")
    eq = be.solve(c, u, nudge)
    assert eq.ok, eq.messages
    assert be.convergence_stats() == {rescuer: 1, "failed": 0}
    # every retry finds the same operating point
    assert float((eq.node_voltages_v - ref.node_voltages_v).abs().max()) <= 1e-9
    assert float((eq.source_currents_a - ref.source_currents_a).abs().max()) <= 1e-12
    # the retry options do not outlive the retry: the next solve is a plain one
    again = be.solve(c, u, nudge)
    assert again.ok and be.convergence_stats() == {rescuer: 1, "failed": 0}


def test_a_sample_that_fails_every_retry_says_so(faults):
    c = make_block((6, 5, 3), kind="single", seed=5)
    u = random_inputs(c, 1, seed=3)
    faults(2 * (1 + len(HOMOTOPIES)))                  # plain op and each homotopy, cold then warm
    be = NgspiceBackend(reduced=True, method="op")
    eq = be.solve(c, u)
    assert not eq.ok and be.convergence_stats()["failed"] == 1
    message = eq.messages[0]
    assert "no convergence" in message and all(name in message for name, _ in HOMOTOPIES) and WARM_START in message


@pytest.mark.parametrize("method", ["sweep", "tran"])
def test_failing_sweeps_fall_back_to_rescued_operating_points(faults, method):
    c = make_block((5, 4, 3), kind="double", seed=6)
    u = random_inputs(c, 8, seed=4)
    ref = ReferenceBackend().solve(c, u)
    faults(1)                                          # the sweep/transient fails; its samples are solved by op
    be = NgspiceBackend(reduced=True, method=method, chunk=8)
    eq = be.solve(c, u)
    assert eq.ok and float((eq.node_voltages_v - ref.node_voltages_v).abs().max()) <= 1e-9
    assert sum(be.convergence_stats().values()) == 0           # no op needed a retry


class FailsOnRows(ReferenceBackend):
    """The reference solver, except that solves of the marked input rows report failure
    (in the phases asked for): the policy's tests need a sample that fails for certain."""

    def __init__(self, rows: torch.Tensor, phases=("free", "nudged")):
        super().__init__()
        self.rows, self.phases = rows, phases

    def solve(self, circuit, inputs, nudge=None, start=None):
        eq = super().solve(circuit, inputs, nudge, start)
        if ("free" if nudge is None else "nudged") not in self.phases:
            return eq
        bad = (inputs[:, None, :] == self.rows[None, :, :]).all(2).any(1)
        if not bad.any():
            return eq
        messages = tuple("no convergence (marked)" if b else m for b, m in zip(bad.tolist(), eq.messages))
        return Equilibrium(eq.node_voltages_v, eq.source_currents_a, eq.converged & ~bad, messages, eq.iterations)


@pytest.mark.parametrize("phases", [("free", "nudged"), ("nudged",)], ids=["free", "nudged"])
def test_skip_gives_the_gradient_of_the_other_samples(tiny, tmp_path, phases):
    torch.manual_seed(0)
    x = torch.rand(12, 64, dtype=torch.float64)
    y = torch.arange(12) % 10
    bad = [3, 8]
    probe = build_model(tiny, backend="reference", seed=1)
    with torch.no_grad():
        marked = probe.layers[0](x)[bad]               # what the energy block receives for those samples
    model = build_model(tiny, backend=FailsOnRows(marked, phases), seed=1)
    policy = FailurePolicy(tmp_path / "run", "skip")

    def step(rows):
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(x[rows], y[rows])
        loss.backward()
        return loss
    ids = torch.arange(100, 112)                       # data-set indices of the batch rows
    loss, rows = policy.step_without_failures(step, ids, "epoch1_batch0")
    assert rows.tolist() == [r for r in range(12) if r not in bad] and policy.skipped == 2
    got = [p.grad.clone() for p in model.parameters()]

    clean = build_model(tiny, backend="reference", seed=1)
    expected_loss, _ = clean.loss(x[rows], y[rows])
    expected_loss.backward()
    assert float(loss.detach()) == float(expected_loss.detach())
    for g, p in zip(got, clean.parameters()):
        assert torch.equal(g, p.grad)
    # both failed in one solve: one deck, the first failed sample's
    phase = "free" if "free" in phases else "beta-nudged"
    decks = [p.name for p in (tmp_path / "run" / "failed").iterdir()]
    assert decks == [f"epoch1_batch0_tiny_e1_{phase}_sample103.cir"]


def test_stop_names_the_block_phase_sample_and_deck(tiny, tmp_path):
    x = torch.rand(6, 64, dtype=torch.float64)
    y = torch.arange(6)
    probe = build_model(tiny, backend="reference", seed=1)
    with torch.no_grad():
        marked = probe.layers[0](x)[[4]]
    model = build_model(tiny, backend=FailsOnRows(marked), seed=1)
    policy = FailurePolicy(tmp_path / "run", "stop")
    with pytest.raises(RunStopped) as info:
        policy.step_without_failures(lambda rows: model.loss(x[rows], y[rows]), torch.arange(40, 46), "epoch2_batch7")
    text = str(info.value)
    assert "epoch2_batch7" in text and "free phase" in text and "data-set sample 44" in text and "\n" not in text
    deck = tmp_path / "run" / "failed" / "epoch2_batch7_tiny_e1_free_sample44.cir"
    assert deck.is_file() and str(deck) in text


@pytest.mark.skipif(shutil.which("ngspice") is None, reason="the ngspice program runs the written deck")
def test_cli_stops_with_one_line_and_resumes_with_skip(tiny, tmp_path, faults, capsys, monkeypatch):
    faults(0, always=True)                              # every ngspice analysis reports no convergence
    monkeypatch.setenv("FFEBM_PROGRESS_INTERVAL", "0")   # the error line alone, however slow the machine
    run = tmp_path / "run"
    args = ["train", str(tiny), "--data", "digits", "--backend", "ngspice", "--epochs", "1", "--out", str(run)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "free phase" in err and "data-set sample" in err
    decks = list((run / "failed").iterdir())
    assert len(decks) == 1 and str(decks[0]) in err
    # The deck stands alone: ngspice (which knows nothing of the injected fault) solves it.
    done = subprocess.run(["ngspice", "-b", str(decks[0])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "n2_0" in done.stdout.lower()
    assert not (run / "summary.json").exists()
    # Resuming with skip: every sample is skipped and counted, the run ends.
    assert main(args + ["--resume", "--on-failure", "skip", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics[0]["skipped"] >= 1437 and summary["solver_stats"]["skipped"] == metrics[0]["skipped"]
    assert summary["test_accuracy"] == 0.0
