"""Training an ff-EBM: the product's main job.

Each step: free phase forward through the chain, ``loss.backward()`` (backprop
through digital blocks, EP or the implicit gradient through energy blocks),
an optimizer step (Adam; digital parameters at ``lr``, conductances at
``lr_analog`` in units of each block's conductance unit), then the
conductances are projected back into ``[g_min, g_max]``.

With ``device`` (a preset of :mod:`ffebm_sim.hardware`) the conductances are
not Adam's: each energy block gets its own update rule (``update``: ``sgd``,
``mixed``, ``tiki-taka``, ``shd``) on devices of that preset scaled to the
block's ``[g_min, g_max]``, and ``rule.step(weights, grads, lr_analog)`` turns
each gradient into pulses. ``lr_analog`` is then the rule's step in weight
units per unit gradient (requested change ``dG = -lr_analog * dL/dw * unit``),
not an Adam step size: it sets how many pulses a gradient asks for, so it
needs a different value than Adam's (default: :func:`default_lr_analog`). The
digital parameters keep Adam at ``lr``. The schedule scales both learning rates.

Ablations: ``freeze_analog`` (``--freeze-analog``) holds every conductance (and bias
conductance) at its initial value, ``freeze_digital`` every other parameter
(:func:`freeze`: they stop requiring gradients and no optimizer or rule is given
them; BatchNorm's running statistics are buffers and still update). Both at once,
or ``freeze_analog`` with a device rule, is refused: nothing, or a contradiction,
would train. A run reports the model's parameter counts by kind
(:func:`ffebm_sim.model.parameter_counts`, the same whether frozen or not) in its
first line and in summary.json (``analog_parameters``, ``digital_parameters``,
``freeze_analog``, ``freeze_digital``).

Determinism: the digital initialisation is seeded, the conductances come from
the block specs' seeds, and epoch ``e`` shuffles with a generator seeded by
``(seed, e)``; so a run resumed from the checkpoint of epoch ``e`` ends with
the same weights and metrics as an uninterrupted run.

Run directory: ``config.json`` (the resolved configuration), ``metrics.csv`` and
``metrics.json`` (per epoch; with a device also the pulses sent), ``checkpoints/epoch_NNNN.pt`` (atomic, with
checksums), ``learning_curves.png`` and ``summary.json``.

Non-convergence: the ngspice backend retries a failed operating point
(homotopies, then a warm start; counted per epoch as ``rescued``). A sample
that still fails writes its stand-alone deck to ``RUN_DIR/failed/`` and then,
by ``on_failure`` (``[training]`` key or ``--on-failure``): ``stop`` ends the
run with one error naming the block, phase, sample and deck (the checkpoints
of finished epochs stay; ``--resume`` continues), ``skip`` drops the sample
from its batch, repeats the batch's step without it and counts it
(``skipped``; a skipped test sample counts as misclassified).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import _atomic_write_bytes, load_latest, save_checkpoint
from .data import DATASET_SHAPES, DATASETS, load_dataset
from .errors import SpecError, plain
from .failures import ON_FAILURE, FailurePolicy, RunStopped
from .model import FFEBM, build_model, parameter_counts
from .outputs import MARKER, DirLock, check_not_locked, check_output_dir, user_error, write_marker
from .spec import read_toml

TRAINING_KEYS = {"epochs", "batch_size", "lr", "lr_analog", "schedule", "on_failure"}
SCHEDULES = ("cosine", "constant")
ADAM_LR_ANALOG = 2e-3
DEFAULT_UPDATE = "sgd"
# Step of a device update rule (weight units per unit dL/dw) when --lr-analog is not given with
# --device. A pulse rule's lr multiplies the gradient (requested dG = -lr * dL/dw * unit): it sets
# how many pulses a gradient asks for, so it is not Adam's step size. Tuned on
# benchmarks/results/specs/digits_ffebm_linear.toml (benchmarks/bench_devices.py, the same 4-run grid per rule, chosen by
# training loss): ideal/sgd and reram/*. Presets not tuned take the rule's reram value: in
# expectation SGD's update does not depend on the device's step, and the two-array rules' lr
# (the fast array's drive) is relative to the same range.
DEVICE_LR_ANALOG = {("ideal", "sgd"): 0.03, ("reram", "sgd"): 0.03, ("reram", "mixed"): 0.1,
                    ("reram", "tiki-taka"): 1.0, ("reram", "shd"): 1.0}


def default_lr_analog(device: str, update: str) -> float:
    """The device rule's lr when none is given: the tuned value, else the rule's reram value."""
    return DEVICE_LR_ANALOG.get((device, update), DEVICE_LR_ANALOG[("reram", update)])

#: How each field is given on the command line (messages name the flag the user typed).
FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "lr_analog": "--lr-analog",
         "on_failure": "--on-failure", "data": "--data", "gradient": "--gradient", "beta_v": "--beta",
         "freeze_analog": "--freeze-analog", "freeze_digital": "--freeze-digital"}

#: Samples per free-phase solve when evaluating (see :func:`evaluate`).
EVAL_BATCH = 256

PULSE_KEYS = ("pulses", "pulses_up", "pulses_down", "fast_pulses", "capped", "reads", "transfers")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (written to RUN_DIR/config.json)."""

    model: str
    out: str
    data: str = "digits"
    data_dir: str | None = None
    backend: str = "reference"
    gradient: str = "ep"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    lr_analog: float | None = None     # None: ADAM_LR_ANALOG, or default_lr_analog() with a device
    schedule: str = "cosine"
    seed: int = 0
    beta_v: float | None = None
    backend_options: dict = field(default_factory=dict)
    device: str | None = None          # a hardware preset: conductances updated by pulses (None: Adam)
    update: str | None = None          # the device update rule (default DEFAULT_UPDATE with a device)
    update_options: dict = field(default_factory=dict)   # rule options, e.g. {"coupling": 0.02}
    on_failure: str = "stop"           # a sample no solver retry converges: stop the run or skip it
    freeze_analog: bool = False        # the conductances keep their initial values (see freeze())
    freeze_digital: bool = False       # the digital blocks' parameters keep their initial values
    model_sha256: str | None = None    # the spec file's content when the run started (set by the run directory)

    def validate(self, labels: dict[str, str] | None = None) -> "TrainConfig":
        """Check every field; returns the config with ``update`` and ``lr_analog`` resolved.

        ``labels`` names fields as the user wrote them when not as a flag (e.g.
        ``{"epochs": "training.epochs"}`` for a value from the spec's [training] table)."""
        from .hardware import PRESETS, RULES
        self._validate_freeze()
        if self.device is None:
            if self.update is not None or self.update_options:
                raise SpecError("--update: a device update rule needs --device PRESET; "
                                f"valid presets are {', '.join(PRESETS)}")
            resolved = self if self.lr_analog is not None else replace(self, lr_analog=ADAM_LR_ANALOG)
        else:
            if self.device not in PRESETS:
                raise SpecError(f"--device: unknown preset {self.device!r}; valid presets are {', '.join(PRESETS)}")
            update = self.update or DEFAULT_UPDATE
            if update not in RULES:
                raise SpecError(f"--update: unknown rule {update!r}; valid rules are {', '.join(RULES)}")
            if not isinstance(self.update_options, dict):
                raise SpecError(f"update_options: {self.update_options!r}; a table of rule options")
            resolved = replace(self, update=update, lr_analog=self.lr_analog if self.lr_analog is not None
                               else default_lr_analog(self.device, update))
        return resolved._validate(labels or {})

    def _validate_freeze(self) -> None:
        for name in ("freeze_analog", "freeze_digital"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{FLAGS[name]}: {plain(getattr(self, name))}; true or false")
        if self.freeze_analog and self.freeze_digital:
            raise SpecError("--freeze-analog and --freeze-digital: together they freeze every parameter and "
                            "nothing would train; give one of them")
        if self.freeze_analog and self.device is not None:
            raise SpecError(f"--freeze-analog and --device {self.device}: the device rule updates the conductances "
                            "that --freeze-analog keeps at their initial values; give one of them")

    def _validate(self, labels: dict[str, str]) -> "TrainConfig":
        def label(name: str) -> str:
            return labels.get(name, FLAGS.get(name, name))
        if self.data not in DATASETS:
            raise SpecError(f"--data: unknown data set {self.data!r}; valid data sets are {', '.join(DATASETS)}")
        if self.gradient not in ("ep", "implicit"):
            raise SpecError(f"--gradient: {self.gradient!r}; valid values are ep, implicit")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > 1_000_000:
                raise SpecError(f"{label(name)}: {plain(v)}; an integer in 1..1000000")
        if self.on_failure not in ON_FAILURE:
            raise SpecError(f"{label('on_failure')}: {plain(self.on_failure)}; valid values are {', '.join(ON_FAILURE)}")
        if self.schedule not in SCHEDULES:
            raise SpecError(f"{label('schedule')}: {plain(self.schedule)}; valid schedules are {', '.join(SCHEDULES)}")
        for name in ("lr", "lr_analog"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise SpecError(f"{label(name)}: {plain(v)}; a finite number > 0")
        return self


def config_with_spec_defaults(config: TrainConfig, given: set[str]) -> TrainConfig:
    """Fill options the user did not give from the model spec's [training] table."""
    spec = read_toml(config.model)
    if config.device is not None:
        # The spec's lr_analog is an Adam step size; a device rule takes its own (default_lr_analog).
        given = set(given) | {"lr_analog"}
    table = spec.get("training", {})
    if not isinstance(table, dict):
        raise SpecError("training: expected a table of defaults (epochs, batch_size, lr, lr_analog)")
    unknown = sorted(set(table) - TRAINING_KEYS)
    if unknown:
        raise SpecError(f"training: unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(TRAINING_KEYS))}")
    taken = {k: v for k, v in table.items() if k not in given}
    return replace(config, **taken).validate(labels={k: f"training.{k}" for k in taken})


def freeze(model: FFEBM, config: TrainConfig) -> None:
    """Hold the kinds of parameters the run freezes at their initial values.

    ``freeze_analog``: every energy block's conductances (layer and bias ones,
    :meth:`FFEBM.analog_parameters`); ``freeze_digital``: every other module's parameters.
    They stop requiring gradients and :func:`_optimizer` (or a device rule) is never given
    them, so no step can move them. Buffers are not parameters: BatchNorm's running
    statistics still follow the batches in training mode, and Dropout still drops.
    """
    frozen = (model.analog_parameters() if config.freeze_analog else []) + \
        (model.digital_parameters() if config.freeze_digital else [])
    for p in frozen:
        p.requires_grad_(False)


def _optimizer(model: FFEBM, config: TrainConfig) -> torch.optim.Optimizer | None:
    """Adam on the digital parameters, and on the conductances unless a device rule owns them;
    a kind the run freezes is left out."""
    groups = [] if config.device is not None or config.freeze_analog else \
        [{"params": model.analog_parameters(), "lr": config.lr_analog}]
    digital = [] if config.freeze_digital else model.digital_parameters()
    if digital:
        groups.append({"params": digital, "lr": config.lr})
    return torch.optim.Adam(groups) if groups else None


def _schedule(config: TrainConfig):
    """The learning-rate factor during epoch ``e + 1`` (cosine decay over the run, or constant)."""
    if config.schedule == "cosine":
        return lambda e: 0.5 * (1 + np.cos(np.pi * min(e, config.epochs) / config.epochs))
    return lambda e: 1.0


def rule_seed(seed: int, block_index: int) -> int:
    """The device draws of energy block ``block_index`` (0-based) for run seed ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(block_index)]).generate_state(1)[0])


def make_update_rules(model: FFEBM, config: TrainConfig) -> list | None:
    """One update rule per energy block on ``config.device`` scaled to the block's range (None: no device)."""
    if config.device is None:
        return None
    from .hardware import get_device, make_update_rule
    rules = []
    for k, block in enumerate(model.energy_blocks):
        if block.g_max_s is None:
            raise SpecError(f"--device: energy block '{block.template.name}' has no g_max; "
                            "set g_max (S) in its [[blocks]] entry: the device range is [g_min, g_max]")
        device = get_device(config.device, block.g_min_s, block.g_max_s)
        rules.append(make_update_rule(config.update, device, [tuple(w.shape) for w in block.all_weights()],
                                      seed=rule_seed(config.seed, k), unit_s=block.conductance_unit_s,
                                      **config.update_options))
    return rules


@torch.no_grad()
def evaluate(model: FFEBM, x: torch.Tensor, y: torch.Tensor, batch: int = EVAL_BATCH,
             failures: FailurePolicy | None = None, where: str = "eval") -> tuple[float, float]:
    """(mean loss, accuracy) of the free phase over a data set (in eval mode: no dropout).
    With ``failures`` skipping, a sample that does not converge counts as misclassified
    and is left out of the mean loss."""
    was_training = model.training
    model.eval()
    bar = _progress(len(x), f"evaluate {where}", solves=lambda: model.solver_stats()["solves"])
    try:
        return _evaluate(model, x, y, batch, failures, where, bar)
    finally:
        bar.close()
        model.train(was_training)


def _evaluate(model: FFEBM, x: torch.Tensor, y: torch.Tensor, batch: int,
              failures: FailurePolicy | None, where: str, bar=None) -> tuple[float, float]:
    total, correct, counted = 0.0, 0, 0
    for s in range(0, len(x), batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        if bar is not None:
            bar.set(s)
        if failures is None:
            out, rows = model(xb), torch.arange(len(xb))
        else:
            out, rows = failures.step_without_failures(lambda r: model(xb[r]), torch.arange(s, s + len(xb)), where)
            if out is None:
                continue
        yb = yb[rows]
        if model.loss_kind == "cross_entropy":
            loss = torch.nn.functional.cross_entropy(out * model.logit_scale, yb, reduction="sum")
        else:
            loss = ((out - model.target_voltages(yb, out.shape[1])) ** 2).mean(1).sum()
        total += float(loss)
        correct += int((out.argmax(1) == yb).sum())
        counted += len(rows)
    return total / max(counted, 1), correct / len(x)


def _progress(total: int, desc: str, solves=None):
    """A tqdm bar on a terminal, else a plain line to stderr every few seconds (ffebm_sim.progress)."""
    from .progress import Progress
    return Progress(total, f"train {desc}", solves=solves)


def _write_metrics(run: Path, metrics: list[dict]) -> None:
    _atomic_write_bytes(run / "metrics.json", json.dumps(metrics, indent=1).encode())
    buf = io.StringIO()
    if metrics:
        # Columns of every row, in first-seen order (a resumed run may add columns).
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in metrics for k in row)))
        w.writeheader()
        w.writerows(metrics)
    _atomic_write_bytes(run / "metrics.csv", buf.getvalue().encode())


def _plot(run: Path, metrics: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [m["epoch"] for m in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(ep, [m["train_loss"] for m in metrics], "o-", label="train (running)")
    axes[0].plot(ep, [m["test_loss"] for m in metrics], "s-", label="test")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[1].plot(ep, [100 * m["train_accuracy"] for m in metrics], "o-", label="train (running)")
    axes[1].plot(ep, [100 * m["test_accuracy"] for m in metrics], "s-", label="test")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write_bytes(run / "learning_curves.png", buf.getvalue())


#: What may change when a run is resumed; everything else must equal the stored configuration.
RESUMABLE = ("epochs", "backend_options", "on_failure", "out", "model_sha256")
#: How each configuration field is spelled by the user (CLI flag or spec key).
FIELD_FLAGS = {"model": "MODEL", "data": "--data", "data_dir": "--data-dir", "backend": "--backend",
               "gradient": "--gradient", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
               "lr_analog": "--lr-analog", "schedule": "schedule", "seed": "--seed", "beta_v": "--beta",
               "device": "--device", "update": "--update", "update_options": "--update-option",
               "on_failure": "--on-failure", "backend_options": "--workers/--scheduler",
               "freeze_analog": "--freeze-analog", "freeze_digital": "--freeze-digital"}


def _sha256(path) -> str | None:
    import hashlib
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _show(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def stored_config(run: Path) -> TrainConfig:
    stored = run / "config.json"
    if not stored.is_file():
        raise SpecError(f"--resume: {run} holds no run (no config.json); start it without --resume")
    try:
        return TrainConfig(**json.loads(stored.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise SpecError(f"--resume: {stored} is not a run configuration ({e.__class__.__name__})") from None


def resume_config(config: TrainConfig, given: set[str] | None = None, epochs_given: bool = True,
                  on_failure_given: bool = False) -> TrainConfig:
    """The stored run's configuration, refusing (one line naming the keys) any change but RESUMABLE.

    ``given``: the fields the user chose (CLI flags); None compares every field of ``config``.
    The spec file is compared by content (moving it is fine, editing it is not).
    """
    run = Path(config.out)
    old = stored_config(run)
    changed = []
    new_sha = _sha256(config.model)
    if old.model_sha256 is not None:
        if new_sha != old.model_sha256:
            changed.append(f"MODEL {config.model} (its content differs from the run's spec {old.model})")
    elif os.path.realpath(config.model) != os.path.realpath(old.model):
        changed.append(f"MODEL {config.model} (the run's: {old.model})")
    names = [f.name for f in fields(TrainConfig)] if given is None else sorted(given)
    for name in names:
        if name in RESUMABLE or name == "model":
            continue
        a, b = getattr(config, name), getattr(old, name)
        if name == "data_dir" and a is not None and b is not None:
            a, b = os.path.realpath(a), os.path.realpath(b)
        if a != b:
            changed.append(f"{FIELD_FLAGS.get(name, name)} {_show(getattr(config, name))} "
                           f"(the run's: {_show(getattr(old, name))})")
    if changed:
        raise SpecError(f"--resume: {run} was started with other settings: {', '.join(changed)}; only --epochs "
                        "(to extend), --workers, --scheduler and --on-failure may change on resume")
    return replace(old, epochs=config.epochs if epochs_given else old.epochs,
                   on_failure=config.on_failure if on_failure_given else old.on_failure,
                   backend_options=config.backend_options if (given is None or "backend_options" in given)
                   else old.backend_options, out=config.out).validate()


def prepare_run_dir(config: TrainConfig, resume: bool, epochs_given: bool = True,
                    on_failure_given: bool = False) -> tuple[Path, TrainConfig]:
    """Create RUN_DIR under the output policy and write config.json, or reopen it (``resume``).

    On resume the stored configuration decides everything but the epochs and
    ``on_failure`` (the spec's content must be the run's); :func:`train` also compares
    the options the user gave.
    """
    run = Path(config.out)
    if resume:
        return run, resume_config(config, set(), epochs_given, on_failure_given)
    check_output_dir(run, "--out", "train", inputs=(config.model, config.data_dir))
    lock, _, config = _open_run_dir(run, config, False)
    lock.release()
    return run, config


def _open_run_dir(run: Path, config: TrainConfig, resume: bool) -> tuple[DirLock, bool, TrainConfig]:
    """Create (or reopen) RUN_DIR, lock it and write config.json; returns (lock, created, config)."""
    created = False
    if not resume:
        try:
            run.mkdir()
            created = True
        except FileExistsError:
            check_output_dir(run, "--out", "train", inputs=(config.model, config.data_dir))
        except OSError as e:
            raise user_error(e, run) from None
        write_marker(run, "train")
        config = replace(config, model_sha256=_sha256(config.model))
    elif not (run / MARKER).is_file():
        write_marker(run, "train")       # a run started before markers existed (it has config.json)
    lock = DirLock(run).acquire()
    try:
        _atomic_write_bytes(run / "config.json", json.dumps(asdict(config), indent=1).encode())
    except BaseException:
        lock.release()
        raise
    return lock, created, config


def _discard_failed_start(run: Path, created: bool) -> None:
    """A start that failed before its first checkpoint leaves nothing behind (it wrote every file there)."""
    if created:
        shutil.rmtree(run, ignore_errors=True)
        return
    for name in ("config.json", "metrics.json", "metrics.csv", "learning_curves.png", "summary.json", MARKER):
        (run / name).unlink(missing_ok=True)
    for sub in ("checkpoints", "failed"):
        shutil.rmtree(run / sub, ignore_errors=True)


def train(config: TrainConfig, resume: bool = False, log=None, epochs_given: bool = True,
          stop_after_epoch: int | None = None, on_failure_given: bool = False,
          given: set[str] | None = None, info=None) -> dict | None:
    """Run (or resume) training; returns the summary written to summary.json.

    ``log`` gets the progress messages (default: stderr), ``info`` the line with the
    model's parameter counts at the start (default: ``log``; the CLI prints it to stdout).

    On ``resume`` the run directory's stored configuration is used and compared with
    ``config`` (the fields in ``given``, or all of them): any difference but RESUMABLE
    is refused; the number of epochs (when ``epochs_given``) and ``on_failure`` (when
    ``on_failure_given``) may change. ``stop_after_epoch`` ends the process's work after
    that epoch's checkpoint, as an interruption would (returns None).

    Nothing is created before the whole configuration is checked; a fresh run that
    fails before its first checkpoint (other than a non-converging sample, whose deck
    is kept) removes what it wrote, so the corrected command works without --resume.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    info = info or log
    config = config.validate()
    run = Path(config.out)
    latest = None
    if resume:
        config = resume_config(config, given, epochs_given, on_failure_given)
        check_not_locked(run)
        latest = load_latest(run / "checkpoints")
        if latest is not None and config.epochs < latest[0]:
            raise SpecError(f"--epochs: {config.epochs}; the run in {run} has finished {latest[0]} epochs; "
                            "give more to extend it, or leave --epochs out")
    else:
        check_output_dir(run, "--out", "train", inputs=(config.model, config.data_dir))
    backend = _backend(config)       # first: an unreachable scheduler is reported within seconds
    try:
        probe = build_model(config.model, backend="reference", gradient=config.gradient, seed=config.seed)
        from .validate import check_model_data
        if config.data in DATASET_SHAPES:
            check_model_data(probe, DATASET_SHAPES[config.data], config.model)     # before seconds of loading
        data = load_dataset(config.data, config.data_dir)
        check_training(config, data, probe)      # before anything is written
        return Run.create(config, data, backend, log, info).execute(resume, latest, stop_after_epoch)
    finally:
        from .progress import close_all
        close_all()                  # an epoch's progress lines end with the epoch, or here
        backend.close()              # stops worker processes, if any


def check_something_trains(config: TrainConfig, model: FFEBM) -> None:
    """A frozen kind must leave parameters of the other kind to train."""
    counts = parameter_counts(model)
    for kind, other in (("analog", "digital"), ("digital", "analog")):
        if getattr(config, f"freeze_{kind}") and counts[other] == 0:
            raise SpecError(f"--freeze-{kind}: {config.model} has no {other} parameters; with its {kind} ones "
                            "frozen nothing would train")


def parameters_line(counts: dict[str, int], config: TrainConfig) -> str:
    """``parameters: 9472 analog (98.7 %), 128 digital`` (and which kind the run freezes)."""
    total = counts["analog"] + counts["digital"]
    share = 100 * counts["analog"] / total if total else 0.0
    frozen = [kind for kind in ("analog", "digital") if getattr(config, f"freeze_{kind}")]
    return (f"parameters: {counts['analog']} analog ({share:.1f} %), {counts['digital']} digital"
            + "".join(f"; {kind} frozen at their initial values" for kind in frozen))


def check_training(config: TrainConfig, data, probe: FFEBM | None = None) -> None:
    """The model spec against the options and the data, before the run starts (see
    :mod:`ffebm_sim.validate`): input size and classes, ``--beta`` inside each block's
    linear regime, and the memory of the dense solver structures at the batch sizes."""
    from .validate import check_beta, check_model_data, check_model_memory
    if probe is None:
        probe = build_model(config.model, backend="reference", gradient=config.gradient, seed=config.seed)
    check_model_data(probe, data, config.model)
    check_something_trains(config, probe)
    if config.beta_v is not None:
        for block in probe.energy_blocks:
            check_beta(config.beta_v, block.template, "--beta", hint=f"the spec gives {block.beta_v!r} V")
    # Training solves a batch (EP: its +beta and -beta phases together), evaluation EVAL_BATCH rows.
    rows = max(config.batch_size * (2 if config.gradient == "ep" else 1), min(EVAL_BATCH, len(data.x_test)))
    check_model_memory(probe, rows, FLAGS["batch_size"], config.batch_size, config.backend, config.gradient,
                       data_bytes=data.nbytes)


@dataclass
class _Tally:
    """An epoch's running training figures (and, with a device, the pulses sent)."""

    loss: float = 0.0         # sum over the samples seen of each batch's mean loss
    correct: int = 0
    seen: int = 0
    pulses: object = None     # hardware.UpdateStats with a device rule, else None
    lr_rule: float = 0.0      # the device rule's lr this epoch (the schedule applied)

    def add(self, loss: torch.Tensor, hits: torch.Tensor, rows: int) -> None:
        self.loss += float(loss.detach()) * rows
        self.correct += int(hits.sum())
        self.seen += rows


@dataclass
class Run:
    """One training run in its directory: the resolved configuration, the model, its
    conductances' update rules (with a device), the data and the backend.

    :meth:`create` builds the model (nothing is written yet); :meth:`execute` opens
    the run directory and trains, :meth:`resume` loads a checkpoint, :meth:`epoch`
    trains and evaluates one epoch, :meth:`checkpoint` writes its state and the
    metrics, :meth:`summary` writes summary.json.
    """

    config: TrainConfig
    dir: Path
    model: FFEBM
    rules: list | None
    data: object
    backend: object
    log: Callable[[str], None]                          # progress messages
    info: Callable[[str], None]                         # the parameter counts at the start
    failures: FailurePolicy = field(init=False)
    factor: Callable[[int], float] = field(init=False)  # learning-rate factor during epoch e + 1
    optimizer: torch.optim.Optimizer | None = field(init=False, default=None)
    scheduler: object = field(init=False, default=None)
    metrics: list[dict] = field(init=False, default_factory=list)
    finished: int = field(init=False, default=0)       # epochs done before this process's first

    @classmethod
    def create(cls, config: TrainConfig, data, backend, log: Callable[[str], None],
               info: Callable[[str], None] | None = None) -> "Run":
        """The run's model (with the kinds it freezes frozen) and update rules, before the run
        directory: bad options leave no files."""
        model = build_model(config.model, backend=backend, gradient=config.gradient,
                            beta_v=config.beta_v, seed=config.seed)
        freeze(model, config)
        return cls(config, Path(config.out), model, make_update_rules(model, config), data, backend, log,
                   info or log)

    def __post_init__(self) -> None:
        self.failures = FailurePolicy(self.dir, self.config.on_failure)
        # Cosine decay of both learning rates over the run's epochs (constant: none).
        self.factor = _schedule(self.config)
        self.optimizer = _optimizer(self.model, self.config)
        if self.optimizer is not None:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.factor)

    def execute(self, resume: bool, latest, stop_after_epoch: int | None = None) -> dict | None:
        """Open (or reopen) the run directory and train to the last epoch; returns the summary
        (None when ``stop_after_epoch`` ended the work early). A fresh run that fails before
        its first checkpoint removes what it wrote, unless a sample did not converge."""
        lock, created, self.config = _open_run_dir(self.dir, self.config, resume)
        try:
            return self._train(latest if resume else None, stop_after_epoch)
        except RunStopped:
            raise                    # its deck in RUN_DIR/failed/ is the diagnosis; the run is resumable
        except Exception:
            if not resume and not any((self.dir / "checkpoints").glob("epoch_*.pt")):
                _discard_failed_start(self.dir, created)
            raise
        finally:
            lock.release()

    def _train(self, latest, stop_after_epoch: int | None) -> dict | None:
        if latest is not None:
            self.resume(*latest)
        self.info(parameters_line(parameter_counts(self.model), self.config))
        t_run = time.perf_counter() - (self.metrics[-1]["elapsed_seconds"] if self.metrics else 0.0)
        for epoch in range(self.finished + 1, self.config.epochs + 1):
            row = self.epoch(epoch, t_run)
            self.checkpoint(epoch)
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < self.config.epochs:
                return None
            self.log(self.epoch_line(row))
        return self.summary()

    # ---- resume -------------------------------------------------------------------------------------

    def resume(self, epoch: int, state: dict) -> None:
        """Continue after the checkpoint of ``epoch``: parameters, optimizer, rules, metrics, solver counts."""
        from .validate import check_state
        check_state(self.model, state["model"], f"{self.dir / 'checkpoints'} (epoch {epoch})", self.config.model)
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self._resume_optimizer(epoch, state)
        if self.rules is not None:
            self._resume_rules(epoch, state)
        self.metrics = state["metrics"]
        for block, stats in zip(self.model.energy_blocks, state["solver_stats"]):
            block.stats.solves, block.stats.failures = stats["solves"], stats["failures"]
        self.finished = epoch
        self.log(f"resuming {self.dir} after epoch {epoch}")

    def _resume_optimizer(self, epoch: int, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The rate of the next epoch by the schedule over the run's (possibly extended) epochs:
        # for an unchanged run exactly what the scheduler stored (the same expression); for an
        # extended one the new cosine's value at this epoch, never the old end's zero.
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.factor(epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _resume_rules(self, epoch: int, state: dict) -> None:
        saved = state.get("update_rules")
        if not saved or len(saved) != len(self.rules):
            raise SpecError(f"--resume: {self.dir} checkpoint of epoch {epoch} holds no device update-rule state")
        for rule, rule_state in zip(self.rules, saved):
            rule.load_state_dict(rule_state)

    # ---- one epoch ----------------------------------------------------------------------------------

    def epoch(self, epoch: int, t_run: float) -> dict:
        """Train epoch ``epoch`` (1-based), evaluate on the test set; returns its metrics row
        (also appended to :attr:`metrics`). ``t_run``: the run's start on the perf_counter clock."""
        t0 = time.perf_counter()
        solves0, skipped0, rescued0 = self.model.solver_stats(), self.failures.skipped, self.rescued()
        tally = self.train_batches(epoch)
        if self.scheduler is not None:
            self.scheduler.step()
        self.model.eval()
        test_loss, test_acc = evaluate(self.model, self.data.x_test, self.data.y_test, failures=self.failures,
                                       where=f"epoch{epoch}_test")
        stats = self.model.solver_stats()
        row = {"epoch": epoch, "train_loss": tally.loss / max(tally.seen, 1),
               "train_accuracy": tally.correct / len(self.data.x_train),
               "test_loss": test_loss, "test_accuracy": test_acc,
               "seconds": time.perf_counter() - t0, "elapsed_seconds": time.perf_counter() - t_run,
               "solves": stats["solves"] - solves0["solves"], "failures": stats["failures"] - solves0["failures"],
               "rescued": self.rescued() - rescued0, "skipped": self.failures.skipped - skipped0}
        if tally.pulses is not None:
            # Pulses this epoch: to the weight devices (up/down), to fast devices, capped requests,
            # fast-device reads and transfer events (see ffebm_sim.hardware.UpdateStats).
            counts = tally.pulses.as_dict()
            row.update({k: counts[k] for k in PULSE_KEYS})
            row["lr_analog"] = tally.lr_rule
        self.metrics.append(row)
        return row

    def train_batches(self, epoch: int) -> _Tally:
        """One pass over the training set in epoch ``epoch``'s shuffled order."""
        n, size = len(self.data.x_train), self.config.batch_size
        perm = self._shuffle(epoch)
        bar = _progress(n, f"epoch {epoch}/{self.config.epochs}", solves=lambda: self.model.solver_stats()["solves"])
        tally = _Tally()
        if self.rules is not None:
            from .hardware import UpdateStats
            tally.pulses, tally.lr_rule = UpdateStats(), self.config.lr_analog * self.factor(epoch - 1)
        self.model.train()
        for s in range(0, n, size):
            idx = perm[s:s + size]
            stepped = self.train_batch(idx, f"epoch{epoch}_batch{s // size}", tally)
            bar.update(len(idx))
            if stepped:
                bar.set_postfix(loss=f"{tally.loss / tally.seen:.4f}", acc=f"{100 * tally.correct / tally.seen:.1f}%")
        bar.close()
        return tally

    def _shuffle(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s sample order, seeded by ``(seed, epoch)``; also seeds torch's global
        generator, which random digital modules (Dropout) draw from, so that a resumed run
        draws the same masks as an uninterrupted one."""
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.data.x_train), generator=gen)
        torch.manual_seed(self.config.seed * 1_000_003 + epoch + 500_000_000)
        return perm

    def train_batch(self, idx: torch.Tensor, where: str, tally: _Tally) -> bool:
        """Gradients on the samples ``idx`` (without those that fail, by ``on_failure``), one update
        and the projection into ``[g_min, g_max]``; False if every sample of the batch was skipped."""
        xb, yb = self.data.x_train[idx], self.data.y_train[idx]

        def step(rows):
            # From zero gradients on every try: a failed try may have left partial ones.
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            self.model.zero_grad(set_to_none=True)
            loss, pred = self.model.loss(xb[rows], yb[rows])
            loss.backward()
            return loss, pred
        result, rows = self.failures.step_without_failures(step, idx, where)
        if result is None:
            return False
        loss, pred = result
        self.update(tally)
        self.model.project()
        tally.add(loss, pred == yb[rows], len(rows))
        return True

    def update(self, tally: _Tally) -> None:
        """Apply the gradients: Adam's step, and each energy block's device rule (pulses)."""
        if self.optimizer is not None:
            self.optimizer.step()
        if self.rules is not None:
            for block, rule in zip(self.model.energy_blocks, self.rules):
                weights = block.all_weights()
                tally.pulses = tally.pulses + rule.step(weights, [w.grad for w in weights], tally.lr_rule)

    def rescued(self) -> int:
        """Samples the backend's retries made converge so far (0 for backends without retries)."""
        convergence = self.backend.convergence_stats()      # ngspice: samples rescued by each retry
        return sum(v for k, v in convergence.items() if k != "failed")

    def epoch_line(self, row: dict) -> str:
        return (f"epoch {row['epoch']}/{self.config.epochs}: train loss {row['train_loss']:.4f} "
                f"acc {100 * row['train_accuracy']:.2f}% | test loss {row['test_loss']:.4f} "
                f"acc {100 * row['test_accuracy']:.2f}% | {row['seconds']:.1f} s, {row['solves']} solves"
                + (f", {row['pulses']} pulses" if "pulses" in row else ""))

    # ---- outputs ------------------------------------------------------------------------------------

    def checkpoint(self, epoch: int) -> None:
        """The checkpoint of ``epoch`` (atomic), metrics.csv/json and the learning curves."""
        save_checkpoint(self.dir / "checkpoints", epoch, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "update_rules": [r.state_dict() for r in self.rules] if self.rules is not None else None,
            "epoch": epoch,
            "metrics": self.metrics, "config": asdict(self.config),
            "solver_stats": [b.stats.as_dict() for b in self.model.energy_blocks]})
        _write_metrics(self.dir, self.metrics)
        c = self.config
        _plot(self.dir, self.metrics, f"{self.model.name} on {c.data}, {c.backend} backend, {c.gradient}"
              + (f", {c.device} devices, {c.update}" if c.device else ""))

    def summary(self) -> dict:
        """Evaluate the final model on the training set and write summary.json; returns it."""
        c = self.config
        train_loss, train_acc = evaluate(self.model, self.data.x_train, self.data.y_train, failures=self.failures,
                                         where="final_train")
        last = self.metrics[-1] if self.metrics else {}
        summary = {
            "model": self.model.name, "data": c.data, "backend": c.backend, "gradient": c.gradient,
            "epochs": len(self.metrics), "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
            "train_accuracy": train_acc, "train_loss": train_loss,
            "seconds": last.get("elapsed_seconds", 0.0), "seed": c.seed,
            "solver_stats": {**self.model.solver_stats(), "rescued": sum(m.get("rescued", 0) for m in self.metrics),
                             "skipped": sum(m.get("skipped", 0) for m in self.metrics)},
            "device": c.device, "update": c.update,
            "pulses": sum(m.get("pulses", 0) for m in self.metrics) if c.device else None,
            **{f"{kind}_parameters": n for kind, n in parameter_counts(self.model).items()},
            "freeze_analog": c.freeze_analog, "freeze_digital": c.freeze_digital,
            "run_dir": str(self.dir), "learning_curves": str(self.dir / "learning_curves.png"),
        }
        _atomic_write_bytes(self.dir / "summary.json", json.dumps(summary, indent=1).encode())
        return summary


def _backend(config: TrainConfig):
    from .backends import get_backend
    options = dict(config.backend_options)
    if config.backend == "ngspice":
        # The training loop solves the Norton-reduced deck: the same node voltages
        # (tested) with the 2*n0 source nodes folded away.
        options.setdefault("reduced", True)
    backend = get_backend(config.backend, **options)
    if options.get("scheduler"):
        backend.start()           # connect now: an unreachable scheduler fails before the run directory
    return backend
