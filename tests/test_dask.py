"""The Dask engine: the same jobs on a loopback LocalCluster give the local pool's answers, bit for bit."""

import numpy as np
import pytest
import torch

from conftest import make_block, random_inputs
from ffebm_sim.backends import Nudge
from ffebm_sim.backends.ngspice import NgspiceBackend

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, scheduler_port=0, worker_dashboard_address=None,
                                  silence_logs=40) as c:
        yield c


@pytest.mark.parametrize("method", ["op", "sweep", "tran"])
def test_dask_cluster_equals_local_pool(cluster, method):
    c = make_block((6, 5, 3), kind="double", seed=3, bias=True)
    u = random_inputs(c, 21, seed=1)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(0).normal(0, 2e-6, (21, 3))))
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    from ffebm_sim.backends.dask_engine import DaskEngine
    on_dask = NgspiceBackend(reduced=True, method=method, scheduler=cluster.scheduler_address, chunk=8)
    on_dask._engine = DaskEngine(cluster.scheduler_address, timeout_s=30, task_timeout_s=60)   # bounded
    on_pool = NgspiceBackend(reduced=True, method=method, workers=2, chunk=8)
    try:
        for nd in (None, nudge):
            a, b = on_dask.solve(c, u, nd), on_pool.solve(c, u, nd)
            assert a.ok and b.ok
            assert torch.equal(a.node_voltages_v, b.node_voltages_v)
            assert torch.equal(a.source_currents_a, b.source_currents_a)
        # both Dask workers took part, each with its own ngspice
        stats = on_dask.engine.stats()
        assert len({s["pid"] for s in stats}) == 2
    finally:
        on_dask.close()
        on_pool.close()
