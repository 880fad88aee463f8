"""Issue 12, items 8-10: one validation of the whole configuration before anything runs.

Every case here was a traceback or silently accepted on main; now it is one
line ``ffebm: error: ...`` naming the field as the user wrote it, exit 2,
nothing written.
"""

import gzip
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffebm_sim.cli import main
from ffebm_sim.data import IDX_FILES, load_dataset
from ffebm_sim.errors import SpecError, plain
from ffebm_sim.io import read_inputs
from ffebm_sim.model import build_model
from ffebm_sim.spec import block_from_dict
from ffebm_sim.validate import beta_limit_v, check_beta

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "circuits" / "digits_ffebm.toml"
MNIST = ROOT / "circuits" / "mnist_ffebm.toml"
PWL = ROOT / "circuits" / "block_pwl.toml"          # 8 inputs
SMALL = ROOT / "circuits" / "block_small.toml"


def run(capsys, *args):
    """The CLI in-process: (exit code, the one stderr line); asserts the bad-input contract."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffebm: error: "), err
    assert "Traceback" not in err and "np.float64" not in err
    return lines[0]


def files(path: Path) -> set:
    return {p.relative_to(path) for p in path.rglob("*")}


def digits_variant(tmp_path, old, new, count=1, name="variant.toml") -> Path:
    text = DIGITS.read_text()
    assert old in text
    out = tmp_path / name
    out.write_text(text.replace(old, new, count))
    return out


# ---- item 8: tracebacks instead of one line ------------------------------------------------------

def test_inputs_npy_of_strings(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.array(["a"] * 8))
    line = run(capsys, "netlist", PWL, "--inputs", tmp_path / "in.npy", "-o", tmp_path / "d.cir")
    assert "--inputs" in line and "strings" in line
    assert not (tmp_path / "d.cir").exists()


def test_huge_layers_are_refused_before_allocating(tmp_path):
    spec = tmp_path / "big.toml"
    spec.write_text("layers = [100000, 100000]\n")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ffebm_sim.cli", "netlist", str(spec), "--seed", "0", "-o",
                        str(tmp_path / "d.cir")], capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t0 < 10
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line, = r.stderr.strip().splitlines()
    assert line.startswith("ffebm: error: layers: [100000, 100000] needs about") and "GiB" in line
    assert files(tmp_path) == {Path("big.toml")}


def test_huge_digital_block_is_sized_before_it_is_built(tmp_path):
    spec = digits_variant(tmp_path, "args = { num_features = 64 }", "args = { num_features = 2000000000 }")
    with pytest.raises(SpecError, match=r"^blocks\[1\]\.args: .* needs about .* GiB"):
        build_model(spec)


def _idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    array = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def mnist_dir(tmp_path: Path, n_train=6, n_test=4, **override) -> Path:
    d = tmp_path / "mnist"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": np.arange(n_test) % 10}
    arrays.update(override)
    for key, stem in IDX_FILES.items():
        _idx(d / stem, arrays[key])
    return d


@pytest.mark.parametrize("override, fragment", [
    ({"train_y": np.array([0, 1, 200, 3, 4, 5])}, "train-labels-idx1-ubyte: label 200 at index 2; labels are the digit classes 0..9"),
    ({"train_y": np.zeros((6, 28, 28)), "train_x": np.zeros(6)}, "swapped"),
    ({"test_y": np.zeros((4, 2))}, "t10k-labels-idx1-ubyte: a labels file holds a 1-D IDX array"),
    ({"test_x": np.zeros((0, 28, 28)), "test_y": np.zeros(0)}, "t10k-images-idx3-ubyte: holds no images"),
    ({"test_y": np.zeros(3)}, "holds 4 images"),
])
def test_bad_mnist_idx_files(tmp_path, override, fragment):
    d = mnist_dir(tmp_path, **override)
    with pytest.raises(SpecError) as e:
        load_dataset("mnist", d)
    assert fragment in str(e.value) and str(e.value).startswith("--data-dir: ")


def test_corrupt_gzip_body_names_the_file(tmp_path, capsys):
    d = mnist_dir(tmp_path)
    stem = IDX_FILES["train_x"]
    good = gzip.compress((d / stem).read_bytes())
    (d / stem).unlink()
    body = bytearray(good)
    body[20:60] = bytes(40)                       # header intact, deflate stream damaged
    (d / f"{stem}.gz").write_bytes(bytes(body))
    out = tmp_path / "run"
    line = run(capsys, "train", MNIST, "--data", "mnist", "--data-dir", d, "--out", out, "--epochs", "1")
    assert f"{stem}.gz: damaged gzip data" in line
    assert not out.exists()


def test_good_mnist_idx_files_load(tmp_path):
    ds = load_dataset("mnist", mnist_dir(tmp_path))
    assert ds.n_features == 784 and ds.n_classes == 10 and len(ds.x_test) == 4


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(st.integers(0, 255), min_size=1, max_size=12))
def test_labels_load_only_inside_0_to_9(tmp_path, labels):
    d = mnist_dir(tmp_path, n_train=len(labels), train_y=np.array(labels),
                  train_x=np.zeros((len(labels), 2, 2)), test_x=np.zeros((4, 2, 2)))
    if max(labels) <= 9:
        assert load_dataset("mnist", d).y_train.tolist() == labels
    else:
        with pytest.raises(SpecError, match=r"train-labels-idx1-ubyte: label \d+ at index \d+"):
            load_dataset("mnist", d)


def test_model_with_nine_outputs_on_digits(tmp_path, capsys):
    spec = digits_variant(tmp_path, "layers = [64, 10]", "layers = [64, 9]")
    out = tmp_path / "run"
    line = run(capsys, "train", spec, "--out", out, "--epochs", "1")
    assert "digits has 10 classes" in line and "9 outputs" in line
    assert not out.exists()


def test_gradcheck_batch_larger_than_the_training_set(capsys):
    line = run(capsys, "gradcheck", DIGITS, "--batch", "5000")
    assert line == ("ffebm: error: --batch: 5000; one batch of distinct training samples, an integer in 1..1437 "
                    "(digits has 1437 training samples)")


def test_gradcheck_batch_memory_is_estimated(capsys, monkeypatch):
    monkeypatch.setenv("FFEBM_MEMORY_BYTES", "2000000")
    line = run(capsys, "gradcheck", DIGITS, "--batch", "1000")
    assert line.startswith("ffebm: error: --batch: 1000 needs about") and "Jacobians" in line


def test_gradcheck_on_data_of_another_size(capsys):
    line = run(capsys, "gradcheck", DIGITS, "--data", "mnist-5k")
    assert "--data: mnist-5k has 784 features" in line and "input_size = 64" in line


def _checkpoint(tmp_path, spec, edit=None) -> Path:
    from ffebm_sim.checkpoint import save_checkpoint
    model = build_model(spec)
    state = model.state_dict()
    if edit:
        edit(model, state)
    return save_checkpoint(tmp_path / "ckpt", 1, {"model": state})


@pytest.mark.parametrize("command", [
    ["gradcheck"], ["netlist", "--block", "1", "--seed", "0", "-o", "DECK"], ["solve", "--block", "1"],
])
def test_checkpoint_of_another_model(tmp_path, capsys, command):
    ckpt = _checkpoint(tmp_path, MNIST)
    args = [str(tmp_path / "d.cir") if a == "DECK" else a for a in command]
    line = run(capsys, args[0], DIGITS, *args[1:], "--checkpoint", ckpt)
    assert "is not a checkpoint of model 'digits_ffebm'" in line and "lacks 'layers.0.weights.0'" in line
    assert not (tmp_path / "d.cir").exists()


def test_checkpoint_with_a_wrong_shape(tmp_path, capsys):
    import torch

    def grow(model, state):
        state["layers.0.weights.0"] = torch.zeros(129, 64, dtype=torch.float64)
    ckpt = _checkpoint(tmp_path, DIGITS, grow)
    line = run(capsys, "gradcheck", DIGITS, "--checkpoint", ckpt)
    assert "'layers.0.weights.0' has shape (129, 64), the spec gives (128, 64)" in line


# ---- item 9: accepted though wrong -------------------------------------------------------------

def test_g_min_above_g_max(tmp_path, capsys):
    spec = digits_variant(tmp_path, "g_min = 0.0                 # S", "g_min = 2e-3")
    with pytest.raises(SpecError, match=r"^blocks\[0\]\.g_min: 0\.002 is not below blocks\[0\]\.g_max = 0\.001"):
        build_model(spec)
    out = tmp_path / "run"
    run(capsys, "train", spec, "--out", out)
    assert not out.exists()


def test_negative_g_min(tmp_path):
    spec = digits_variant(tmp_path, "g_min = 0.0                 # S", "g_min = -1e-4")
    with pytest.raises(SpecError, match=r"^blocks\[0\]\.g_min: -0\.0001 is negative"):
        build_model(spec)


def _huge_conductance(model, state):
    block = model.energy_blocks[0]
    state["layers.0.weights.0"][3, 4] = 1e5 / block.conductance_unit_s


@pytest.mark.parametrize("command", [
    ["netlist", "--block", "1", "--seed", "0", "-o", "DECK"], ["solve", "--block", "1"],
    ["verify", "--block", "2"], ["gradcheck"], ["analyze", "--out", "AN"],
])
def test_checkpoint_conductance_outside_g_max_is_refused(tmp_path, capsys, command):
    ckpt = _checkpoint(tmp_path, DIGITS, _huge_conductance)
    args = [str(tmp_path / "d.cir") if a == "DECK" else str(tmp_path / "an") if a == "AN" else a for a in command]
    line = run(capsys, args[0], DIGITS, *args[1:], "--checkpoint", ckpt)
    assert ("energy block 1 ('digits_e1') weights.0 holds 100000.0 S at [3, 4], outside the block's "
            "g_min..g_max [0.0, 0.001] S; refused, not clipped") in line
    assert "blocks[0].g_min/g_max" in line
    assert files(tmp_path) == {Path("ckpt"), Path("ckpt/epoch_0001.pt"), Path("ckpt/epoch_0001.sha256")}


def test_checkpoint_inside_the_range_loads(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, DIGITS)
    assert main(["netlist", str(DIGITS), "--block", "1", "--checkpoint", str(ckpt), "-o", str(tmp_path / "d.cir")]) == 0
    assert (tmp_path / "d.cir").is_file()


def test_complex_inputs(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.ones((2, 8)) * (1 + 1j))
    line = run(capsys, "solve", PWL, "--inputs", tmp_path / "in.npy")
    assert "complex numbers" in line


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from(["U3", "S3", "c8", "c16", "M8[s]", "m8[s]"]))
def test_read_inputs_takes_real_numbers_only(tmp_path_factory, dtype):
    path = tmp_path_factory.mktemp("in") / "in.npy"
    np.save(path, np.zeros((1, 8)).astype(dtype))
    with pytest.raises(SpecError) as e:
        read_inputs(path, 8)
    assert str(e.value).startswith("--inputs: ") and "real numbers" in str(e.value)


def test_data_dir_with_a_bundled_data_set(tmp_path, capsys):
    out = tmp_path / "run"
    line = run(capsys, "train", DIGITS, "--data", "digits", "--data-dir", tmp_path, "--out", out)
    assert "--data-dir:" in line and "only read for --data mnist" in line
    assert not out.exists()


def test_beta_outside_the_linear_regime(tmp_path, capsys):
    out = tmp_path / "run"
    line = run(capsys, "train", DIGITS, "--beta", "1e6", "--out", out)
    assert "--beta: 1000000.0 V is outside EP's linear regime" in line and "0.0259 V" in line
    assert "the spec gives 0.001 V" in line
    assert not out.exists()
    line = run(capsys, "gradcheck", DIGITS, "--beta", "1e6")
    assert "--beta: 1000000.0 V" in line


def test_spec_beta_outside_the_linear_regime(tmp_path):
    spec = digits_variant(tmp_path, "beta = 1e-3                 # EP nudge amplitude, V", "beta = 0.5")
    with pytest.raises(SpecError, match=r"^blocks\[0\]\.beta: 0\.5 V is outside EP's linear regime"):
        build_model(spec)


def test_beta_bound_is_the_junction_scale_and_admits_the_default():
    model = build_model(DIGITS)
    for block in model.energy_blocks:
        limit, why = beta_limit_v(block.template)
        assert limit == pytest.approx(0.02585, rel=1e-3) and "N*Vt" in why
        check_beta(1e-3, block.template, "--beta")          # the spec default
    linear = block_from_dict({"layers": [2, 1], "input_gain": 3.0})
    assert beta_limit_v(linear)[0] == pytest.approx(0.3)


# ---- item 10: messages -------------------------------------------------------------------------

def test_training_table_errors_name_the_spec_key(tmp_path, capsys):
    spec = digits_variant(tmp_path, "epochs = 20", 'epochs = "many"')
    line = run(capsys, "train", spec, "--out", tmp_path / "run")
    assert line == "ffebm: error: training.epochs: 'many'; an integer in 1..1000000"
    spec = digits_variant(tmp_path, "lr = 1e-2 ", "lr = -1.0 ")
    line = run(capsys, "train", spec, "--out", tmp_path / "run")
    assert line.startswith("ffebm: error: training.lr: -1.0;")
    line = run(capsys, "train", DIGITS, "--epochs", "0", "--out", tmp_path / "run")
    assert line.startswith("ffebm: error: --epochs: 0;")
    assert not (tmp_path / "run").exists()


@settings(max_examples=30, deadline=None)
@given(value=st.floats(-1e3, -1e-12))
def test_values_are_plain_python_numbers(tmp_path_factory, value):
    d = tmp_path_factory.mktemp("npz")
    g1 = np.full((4, 2), 1e-4)
    g1[1, 1] = value
    np.savez(d / "w.npz", g1=g1, g2=np.full((2, 1), 1e-4))
    with pytest.raises(SpecError) as e:
        block_from_dict({"layers": [2, 2, 1], "conductances": {"file": "w.npz"}}, base_dir=d)
    assert f"negative value {float(value)!r} at [1, 1]" in str(e.value)
    assert "np." not in str(e.value)


def test_spec_error_rewrites_numpy_scalar_reprs():
    assert str(SpecError(f"x: {np.float64(-0.0004)!r}; y {np.int64(3)!r}")) == "x: -0.0004; y 3"
    assert plain(np.float64(2.5)) == "2.5" and plain(np.float32(0.5)) == "0.5" and plain("a") == "'a'"


def test_gradcheck_on_a_block_spec(capsys):
    line = run(capsys, "gradcheck", SMALL)
    assert "is a block spec" in line and "needs a model spec" in line
    assert "input_size" in line and "[[blocks]]" in line and "unknown key" not in line
