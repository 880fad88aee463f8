import numpy as np
import pytest
import torch

from ffebm_sim.circuit import BlockCircuit, Nonlinearity
from ffebm_sim.devices import DiodeModel, PwlTable

SCHOTTKY = DiodeModel(saturation_current_a=1e-8, emission_coefficient=1.0)
TABLE = PwlTable((-0.5, -0.1, 0.1, 0.5), (-2e-4, 0.0, 0.0, 2e-4))


def make_block(sizes, kind="double", seed=0, gain=2.0, bias=False, output=None, nudge="current", v_off=0.0):
    """A random block whose nonlinear elements conduct for inputs in [-1, 1]."""
    rng = np.random.default_rng(seed)
    shapes = [(2 * sizes[0], sizes[1])] + [(sizes[k - 1], sizes[k]) for k in range(2, len(sizes))]
    gs = [rng.uniform(0, 1e-4, s) for s in shapes]
    nl = Nonlinearity(kind, v_off, SCHOTTKY if kind in ("double", "single") else None,
                      TABLE if kind == "pwl" else None)
    kw = {}
    if bias:
        kw = dict(bias_pos=[rng.uniform(0, 2e-5, n) for n in sizes[1:]],
                  bias_neg=[rng.uniform(0, 2e-5, n) for n in sizes[1:]])
    return BlockCircuit(tuple(sizes), tuple(gs), (nl,) * (len(sizes) - 2), output, gain, nudge=nudge,
                        name=f"test_{kind}", **kw)


#: A tiny digits model for analysis tests (Linear 64->6, one 6->5->10 energy block): ``{extra}``
#: goes into the energy-block entry, ``{circuit_extra}`` into its ``[blocks.circuit]``.
ANALYZE_TINY = """
name = "tiny"
input_size = 64
[loss]
kind = "cross_entropy"
logit_scale = 20.0
[[blocks]]
type = "Linear"
args = { in_features = 64, out_features = 6 }
[[blocks]]
type = "energy"
g_max = 1e-3
{extra}
[blocks.circuit]
layers = [6, 5, 10]
input_gain = 4.0
{circuit_extra}
nonlinearity = { kind = "double", diode = { is = 1e-12, n = 1.0 } }
conductances = { low = 0.0, high = 1e-4, seed = 3 }
"""


def analyze_tiny(extra: str = "", circuit_extra: str = "", name: str = "tiny") -> str:
    """:data:`ANALYZE_TINY` with its two insertion points filled."""
    return (ANALYZE_TINY.replace("{extra}", extra).replace("{circuit_extra}", circuit_extra)
            .replace('name = "tiny"', f'name = "{name}"', 1))


#: A tiny digits model (Linear 64->8, one 8->8->10 energy block) for training tests.
TINY = """
name = "tiny"
input_size = 64
[loss]
kind = "cross_entropy"
logit_scale = 20.0
[training]
epochs = 2
batch_size = 64
lr = 1e-2
lr_analog = 3e-2
[[blocks]]
type = "Linear"
args = { in_features = 64, out_features = 8 }
[[blocks]]
type = "energy"
g_max = 1e-3
[blocks.circuit]
layers = [8, 8, 10]
input_gain = 4.0
nonlinearity = { kind = "double", diode = { is = 1e-12, n = 1.0 } }
conductances = { low = 0.0, high = 1e-4, seed = 3 }
"""


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_inputs(circuit, batch, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (batch, circuit.n_inputs)))


# Small dense solves: one intra-op thread (see ffebm_sim.cli.main).
torch.set_num_threads(1)
