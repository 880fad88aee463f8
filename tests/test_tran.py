"""The resident-circuit transient (method ``tran``): one time point per sample, each a DC
operating point within 1e-9 V of the reference; a job's answer depends on the job alone
(bit for bit, whatever the process solved before), and on the other samples of its job
only within the solver's tolerance."""

import os

import numpy as np
import pytest
import torch

from conftest import make_block, random_inputs
from ffebm_sim.backends import Nudge, extsrc
from ffebm_sim.backends.deckedit import pwl_rawfile, pwl_vector, resident_deck
from ffebm_sim.backends.jobs import (_run_tran, cache_friendly_order, input_key,
                                    run_job, sample_rows)
from ffebm_sim.backends.ngspice import NgspiceBackend
from ffebm_sim.backends.reference import ReferenceBackend
from ffebm_sim.backends.session import NgspiceDeckError, session
from ffebm_sim.spec import load_block


@pytest.fixture(params=["external", "pwl"])
def values_in(request, monkeypatch):
    """Each test with this fixture runs twice: the sources served from memory by the C callback
    (``EXTERNAL``, :mod:`ffebm_sim.backends.extsrc`) and as PWL sources given their values by
    ``alter`` (the fallback without a C compiler)."""
    if request.param == "external":
        if extsrc.library() is None:
            pytest.skip("the EXTERNAL sources' C extension cannot be built here")
    else:
        monkeypatch.setenv("FFEBM_NGSPICE_EXTERNAL", "0")
    return request.param


def _job(c, u, nudge=None, chunk=None, reduced=True):
    be = NgspiceBackend(reduced=reduced, method="tran", chunk=chunk or len(u))
    return be.jobs(c, u, nudge)[0][0]


def _agrees_with_reference(c, u, values, nudge=None) -> bool:
    """Every node voltage of ``values`` within 1e-9 V of the reference solver's."""
    return float(np.abs(values - ReferenceBackend().solve(c, u, nudge).node_voltages_v.numpy()).max()) <= 1e-9


def _rusage(key: str) -> int:
    for line in session().command("rusage all").splitlines():
        if line.strip().startswith(key):
            return int(float(line.split("=")[1]))
    raise AssertionError(f"rusage has no {key!r}")


def test_one_accepted_time_point_per_sample_each_an_operating_point(values_in):
    c = load_block("circuits/block_small.toml")
    u = random_inputs(c, 16, seed=1)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(0).normal(0, 2e-6, (16, c.n_outputs))))
    job = _job(c, u, nudge)
    s = session()
    with s.lock:
        s.unload()
        got = _run_tran(s, job)          # None would mean it fell back to op
        accepted, rejected = _rusage("Accepted timepoints"), _rusage("Rejected timepoints")
    assert got is not None
    assert (accepted, rejected) == (16, 0)
    assert _agrees_with_reference(c, u, got.values, nudge)


def test_a_failed_step_is_a_continuation_and_the_samples_are_kept():
    """ngspice 39 gives a time point at least 100 Newton iterations before it backs off (step
    / 8): then the callback keeps ngspice's step, the next one again ends on the integer,
    and the inserted points are skipped when the samples are read."""
    s = session()
    delta = np.array([0.125])
    ptr = s._ffi.cast("double *", s._ffi.from_buffer(delta))
    s._grid = True
    try:
        s._on_sync(3.0, ptr, 1.0, 1, 0, 1, None)          # a failed step from t = 3: ngspice's 1/8 stays
        assert delta[0] == 0.125
        s._on_sync(3.125, ptr, 0.125, 0, 0, 1, None)      # accepted at 3.125: the next step ends on 4
        assert 3.125 + delta[0] == 4.0
        s._on_sync(4.0, ptr, 0.875, 0, 0, 0, None)
        assert delta[0] == 1.0
    finally:
        s._grid = False
    delta[0] = 0.3
    s._on_sync(4.0, ptr, 1.0, 0, 0, 0, None)              # other transients: ngspice's own step
    assert delta[0] == 0.3
    times = np.array([0.0, 1.0, 1.125, 1.375, 2.0, 3.0])
    assert sample_rows(times, 4).tolist() == [0, 1, 4, 5]
    assert sample_rows(np.array([0.0, 1.0, 2.5]), 3) is None
    assert sample_rows(np.array([0.0, 1.0]), 3) is None


def test_a_job_does_not_depend_on_what_the_process_solved_before(values_in):
    """The circuit stays loaded between jobs: a job run after others (other values, another
    length) gives the bits it gives on a freshly loaded circuit."""
    c = make_block((6, 5, 3), kind="single", seed=5, bias=True)
    a = _job(c, random_inputs(c, 8, seed=1), Nudge(currents_a=torch.full((8, 3), 1e-6, dtype=torch.float64)))
    b = _job(c, random_inputs(c, 5, seed=2), Nudge(currents_a=torch.full((5, 3), -3e-6, dtype=torch.float64)))
    s = session()
    with s.lock:
        s.unload()
    fresh = run_job(a)
    run_job(b)
    again = run_job(a)
    assert np.array_equal(fresh.values, again.values)


def test_a_sample_agrees_within_tolerance_wherever_it_sits():
    """Sample k starts Newton from sample k-1: its answer depends on its neighbours in the
    last bits only (op's answers are bit-identical at any position, tests/test_pool.py)."""
    c = make_block((6, 5, 3), kind="double", seed=8)
    u = random_inputs(c, 12, seed=4)
    be = NgspiceBackend(reduced=True, method="tran", chunk=6)
    forward = be.solve(c, u).node_voltages_v
    backward = be.solve(c, u.flip(0)).node_voltages_v.flip(0)
    assert float((forward - backward).abs().max()) <= 1e-9


def test_a_long_chunk_is_one_transient(values_in):
    """The values travel in memory or a rawfile, not in a command: no 1024-character limit, one transient."""
    c = make_block((4, 3, 2), kind="double", seed=9)
    u = random_inputs(c, 75, seed=5)
    s = session()
    with s.lock:
        s.unload()
        got = _run_tran(s, _job(c, u))
        accepted = _rusage("Accepted timepoints")
    assert got is not None and accepted == 75
    assert _agrees_with_reference(c, u, got.values)


def test_the_rawfile_carries_exact_values():
    """ngspice reads the rawfile's doubles bit for bit (values whose decimal text ngspice's
    number parser would round differently included), and the file is gone once loaded."""
    rng = np.random.default_rng(3)
    columns = np.concatenate([rng.normal(0, 1e-4, (5, 3)), [[0.1, 1 / 3, -1.2345678901234567e-100]]])
    s = session()
    with s.lock:
        s.unload()
        s.load(".title rawfile\nr1 a 0 1\ni1 0 a PWL(0 0)\ni2 0 a PWL(0 0)\ni3 0 a PWL(0 0)\n.end\n")
        s.set_pwls(["i1", "i2", "i3"], pwl_rawfile(columns), [pwl_vector(k) for k in range(3)],
                   [tuple(col) for col in columns.T.tolist()])
        back = s.read_arrays([f"@i{k + 1}[pwl]" for k in range(3)], 2 * len(columns))
        left = os.listdir(s._scratch())
        s.unload()
    assert back is not None
    assert np.array_equal(back[1::2], columns) and np.array_equal(back[0::2, 0], np.arange(len(columns)))
    assert left == []


def test_refused_pwl_values_raise_a_deck_error():
    """An ``alter`` ngspice refuses is an NgspiceDeckError (a tran job then falls back to op)."""
    s = session()
    with s.lock, pytest.raises(NgspiceDeckError, match="refused"):
        s.set_pwls(["nosuchsource"], pwl_rawfile(np.zeros((2, 1))), [pwl_vector(0)], [(0.0, 0.0)])


def test_resident_deck_keeps_every_other_card():
    c = make_block((3, 2, 2), kind="double", seed=0)
    job = _job(c, random_inputs(c, 2, seed=0))
    deck, _ = resident_deck(job.deck, job.deck_digest, job.sources)
    plain = [line for line in job.deck.splitlines() if line.split() and line.split()[0].lower() not in job.sources]
    resident = deck.splitlines()
    assert all(line in resident for line in plain)
    for name in job.sources:
        card = next(line for line in resident if line.split() and line.split()[0].lower() == name)
        assert card.endswith("PWL(0 0)")
    external, _ = resident_deck(job.deck, job.deck_digest, job.sources, external=True)
    assert [line for line in external.splitlines() if not line.endswith(" external")] == \
        [line for line in resident if not line.endswith(" PWL(0 0)")]


def test_external_and_pwl_sources_give_the_same_answers(monkeypatch):
    """The same jobs with the values served from memory and as altered PWLs agree far within
    the solver's tolerance (every accepted time point is a sample either way)."""
    if extsrc.library() is None:
        pytest.skip("the EXTERNAL sources' C extension cannot be built here")
    c = make_block((6, 5, 3), kind="double", seed=11, bias=True)
    u = random_inputs(c, 20, seed=7)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(5).normal(0, 2e-6, (20, 3))))
    jobs = NgspiceBackend(reduced=True, method="tran", chunk=10).jobs(c, u, nudge)[0]
    external = [run_job(j) for j in jobs]
    monkeypatch.setenv("FFEBM_NGSPICE_EXTERNAL", "0")
    s = session()
    with s.lock:
        before = s.pwl_sets
    pwl = [run_job(j) for j in jobs]
    with s.lock:
        assert s.pwl_sets > before             # the PWL path did run
    for a, b in zip(external, pwl):
        assert all(m == "" for m in a.messages + b.messages)
        assert float(np.abs(a.values - b.values).max()) <= 1e-12


def test_the_callback_serves_each_sample_and_interpolates_between_them():
    """Row k at t = k, the straight line between rows (ngspice's points after a failed step),
    row 0 before 0, the last row after the end; an unknown name or no values: 0 and a miss."""
    lib = extsrc.library()
    if lib is None:
        pytest.skip("the EXTERNAL sources' C extension cannot be built here")
    s = session()
    with s.lock:
        table = extsrc.Table(lib)
        table.set_names(("i1", "v2"))
        values = np.array([[1.0, -2.0], [3.0, 5.0], [0.1, 1 / 3]])
        table.set_values(values)
        ffi, fn = lib.ffi, lib.lib.ffebm_source_value
        out = ffi.new("double *")
        # ngspice passes each instance's own name string, which lives as long as the circuit
        strings = {name: ffi.new("char[]", name) for name in (b"i1", b"V2", b"v2", b"nosuch")}

        def at(t, name):
            fn(out, t, strings[name], 0, ffi.NULL)
            return out[0]
        assert [at(float(k), b"v2") for k in range(3)] == values[:, 1].tolist()
        assert at(0.5, b"i1") == 2.0 and at(1.25, b"V2") == 5.0 + 0.25 * (1 / 3 - 5.0)
        assert at(-1.0, b"i1") == 1.0 and at(7.0, b"i1") == 0.1
        assert table.clear_values() == 0
        table.set_values(values)
        assert at(1.0, b"nosuch") == 0.0
        assert table.clear_values() == 1
        assert at(1.0, b"i1") == 0.0                 # no values set
        s.unload()                                   # the process's table is set again by the next job
        if s._external is not None:
            s._external.forget_names()


@pytest.mark.parametrize("n", [2, 3])
def test_auto_takes_the_transient_from_two_samples(n):
    c = make_block((4, 3, 2), kind="double", seed=1)
    job = NgspiceBackend(reduced=True, chunk=16).jobs(c, random_inputs(c, n, seed=0), None)[0][0]
    assert job.method == "tran"
    one = NgspiceBackend(reduced=True, chunk=16).jobs(c, random_inputs(c, 1, seed=0), None)[0][0]
    assert one.method == "op"


def test_jobs_sharing_their_inputs_run_one_after_another(monkeypatch):
    """EP's nudged request repeats the free phase's inputs: +beta chunk k and -beta chunk k run
    back to back (first the chunk the process last held), so a resident circuit keeps the input
    PWLs (the PWL path); the results come back in job order and equal those run in job order."""
    monkeypatch.setenv("FFEBM_NGSPICE_EXTERNAL", "0")
    c = make_block((6, 5, 3), kind="double", seed=10)
    u = random_inputs(c, 16, seed=6)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(4).normal(0, 2e-6, (32, 3))))
    be = NgspiceBackend(reduced=True, chunk=8)
    jobs = be.jobs(c, torch.cat([u, u]), nudge)[0]
    assert cache_friendly_order(jobs) == [0, 2, 1, 3]
    assert cache_friendly_order(jobs, first=input_key(jobs[1])) == [1, 3, 0, 2]
    s = session()
    in_order = [run_job(j) for j in jobs]
    with s.lock:
        before = s.pwl_sets
    got = be.run_jobs(c, torch.cat([u, u]), nudge, jobs)
    with s.lock:
        alters = s.pwl_sets - before
    for a, b in zip(in_order, got):
        assert np.array_equal(a.values, b.values)
    # each chunk's input sources are given their values once (its +beta and -beta jobs run back
    # to back), every job's nudge sources
    inputs, nudges = jobs[0].inputs, len(jobs[0].sources) - jobs[0].inputs
    assert alters == 2 * inputs + len(jobs) * nudges


def test_jobs_are_32_samples_when_a_request_still_makes_two_of_them():
    c = make_block((4, 3, 2), kind="double", seed=1)
    be = NgspiceBackend(reduced=True)
    for n, sizes in ((32, [16, 16]), (63, [16, 16, 16, 15]), (64, [32, 32]), (100, [32, 32, 32, 4])):
        assert [j.values.shape[0] for j in be.jobs(c, random_inputs(c, n, seed=0), None)[0]] == sizes
    assert [j.values.shape[0] for j in NgspiceBackend(reduced=True, chunk=8).jobs(c, random_inputs(c, 20), None)[0]] == [8, 8, 4]


def test_without_a_compiler_the_extension_is_none(monkeypatch, tmp_path):
    """A build that fails (no C compiler, no headers) gives None, and jobs take the PWL path."""
    def no_compiler(name, directory):
        raise OSError("no C compiler")
    monkeypatch.setattr(extsrc, "_TRIED", False)
    monkeypatch.setattr(extsrc, "_LIBRARY", None)
    monkeypatch.setattr(extsrc, "_cache_dir", lambda: str(tmp_path / "empty"))
    monkeypatch.setattr(extsrc, "_build", no_compiler)
    assert extsrc.library() is None
    monkeypatch.setattr(extsrc, "_TRIED", False)
    monkeypatch.setenv("FFEBM_NGSPICE_EXTERNAL", "0")
    assert extsrc.library() is None and session().external_table() is None
