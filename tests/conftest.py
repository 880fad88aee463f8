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


TRAINING_TABLE = """[training]
epochs = 2
batch_size = 64
lr = 1e-2
lr_analog = 3e-2
"""


def tiny_model(width: int, hidden: int, training: str = "", extra: str = "", circuit_extra: str = "",
               name: str = "tiny") -> str:
    """A tiny digits model spec: Linear 64->``width``, one ``width``->``hidden``->10 energy block.
    ``training``: a ``[training]`` table; ``extra`` goes into the energy-block entry,
    ``circuit_extra`` into its ``[blocks.circuit]``."""
    lines = [f'name = "{name}"', "input_size = 64", "[loss]", 'kind = "cross_entropy"', "logit_scale = 20.0",
             training.rstrip("\n"), "[[blocks]]", 'type = "Linear"',
             f"args = {{ in_features = 64, out_features = {width} }}", "[[blocks]]", 'type = "energy"',
             "g_max = 1e-3", extra, "[blocks.circuit]", f"layers = [{width}, {hidden}, 10]", "input_gain = 4.0",
             circuit_extra, 'nonlinearity = { kind = "double", diode = { is = 1e-12, n = 1.0 } }',
             "conductances = { low = 0.0, high = 1e-4, seed = 3 }"]
    return "\n" + "\n".join(line for line in lines if line) + "\n"


def analyze_tiny(extra: str = "", circuit_extra: str = "", name: str = "tiny") -> str:
    """The tiny model of the analysis tests (Linear 64->6, one 6->5->10 energy block)."""
    return tiny_model(6, 5, "", extra, circuit_extra, name)


#: A tiny digits model (Linear 64->8, one 8->8->10 energy block) for training tests.
TINY = tiny_model(8, 8, TRAINING_TABLE)


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
