"""EP against the exact gradient, per parameter tensor, on one batch (as in the ff-EBM paper).

The reference is the implicit gradient of the same circuits (reference
solver), chained through the same digital blocks by autograd; the estimate is
EP through every energy block on the chosen backend. Both see the same batch
and the same initial parameters.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import DATASET_SHAPES, load_dataset
from .errors import SpecError
from .model import build_model
from .progress import Progress

#: The "Done when" thresholds of a passing gradient check.
MIN_COSINE = 0.9999
MAX_REL_ERROR = 0.01


def prepare(spec, backend: str = "reference", beta_v: float | None = None, batch: int = 32, seed: int = 0,
            data: str | None = None, checkpoint=None):
    """The whole configuration of a gradient check, validated before any solve
    (see :mod:`ffebm_sim.validate`): the spec, ``--beta`` inside every block's linear
    regime, the checkpoint's fit, the data set's fit to the model, ``--batch`` against
    the training set and the memory its dense Jacobians take.

    Returns ``(probe model, checkpoint state or None, x, y, data set name)``."""
    from .validate import apply_checkpoint, check_beta, check_model_data, check_model_memory
    probe = build_model(spec, backend="reference", seed=seed)
    state = None if checkpoint is None else apply_checkpoint(probe, checkpoint, str(spec))["model"]
    if beta_v is not None:
        for block in probe.energy_blocks:
            check_beta(beta_v, block.template, "--beta", hint=f"the spec gives {block.beta_v!r} V")
    name = data or ("mnist-5k" if probe.input_size == 784 else "digits")
    if name in DATASET_SHAPES:
        check_model_data(probe, DATASET_SHAPES[name], str(spec))      # before seconds of loading
    ds = load_dataset(name)
    check_model_data(probe, ds, str(spec))
    n = len(ds.x_train)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= n:
        raise SpecError(f"--batch: {batch!r}; one batch of distinct training samples, an integer in 1..{n} "
                        f"({name} has {n} training samples)")
    check_model_memory(probe, 2 * batch, "--batch", batch, backend, "ep")     # centered EP: 2 x batch rows
    idx = torch.from_numpy(np.random.default_rng(seed).choice(n, batch, replace=False))
    return probe, state, ds.x_train[idx], ds.y_train[idx], name


def model_gradients(spec, backend: str, gradient: str, x, y, beta_v=None, centered=None, seed=0, checkpoint=None):
    model = build_model(spec, backend=backend, gradient=gradient, beta_v=beta_v, centered=centered, seed=seed)
    if checkpoint is not None:
        model.load_state_dict(checkpoint)
    # The deterministic network (dropout off): both estimates must see the same function.
    model.eval()
    loss, _ = model.loss(x, y)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, float(loss.detach()), model


def compare(estimate: dict, exact: dict) -> list[dict]:
    rows = []
    for name, g in exact.items():
        e = estimate[name].flatten().to(torch.float64)
        g = g.flatten().to(torch.float64)
        denom = float(e.norm() * g.norm())
        rows.append({"name": name, "shape": list(exact[name].shape),
                     "cosine": float(e @ g) / denom if denom > 0 else float("nan"),
                     "rel_error": float((e - g).norm() / g.norm()) if g.norm() > 0 else float("nan"),
                     "norm": float(g.norm())})
    return rows


def gradcheck(spec, backend: str = "reference", beta_v: float | None = None, batch: int = 32, seed: int = 0,
              data: str | None = None, centered: bool = True, checkpoint=None) -> dict:
    """Per-tensor comparison; ``checkpoint`` checks at trained parameters (where the clamps conduct)."""
    probe, state, x, y, data_name = prepare(spec, backend, beta_v, batch, seed, data, checkpoint)
    with Progress(2 * batch, f"gradcheck {probe.name} (implicit, then EP on {backend})") as bar:
        exact, loss, ref_model = model_gradients(spec, "reference", "implicit", x, y, seed=seed, checkpoint=state)
        bar.update(batch)
        estimate, _, model = model_gradients(spec, backend, "ep", x, y, beta_v=beta_v, centered=centered, seed=seed,
                                             checkpoint=state)
        bar.update(batch)
    rows = compare(estimate, exact)
    min_cos = min(r["cosine"] for r in rows)
    max_rel = max(r["rel_error"] for r in rows)
    return {
        "model": model.name, "backend": backend, "data": data_name, "batch": batch, "seed": seed,
        "beta_v": [b.beta_v for b in model.energy_blocks], "centered": centered, "loss": loss,
        "tensors": rows, "min_cosine": min_cos, "max_rel_error": max_rel,
        "thresholds": {"min_cosine": MIN_COSINE, "max_rel_error": MAX_REL_ERROR},
        "ok": bool(min_cos >= MIN_COSINE and max_rel <= MAX_REL_ERROR),
        "solver_stats": model.solver_stats(),
        "nonlinear_active_fraction": _active_fractions(ref_model, x),
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }


def _active_fractions(model, x) -> list[float]:
    """Per energy block: share of junctions carrying > 0.1 uA on this batch (is the check nonlinear?)."""
    from .blocks import EnergyBlock
    from .backends.reference import ReferenceBackend
    from .verify import _conducting_fraction
    out, h = [], x
    with torch.no_grad():
        for m in model.layers:
            if isinstance(m, EnergyBlock):
                c = m.circuit
                eq = ReferenceBackend().solve(c, h)
                out.append(_conducting_fraction(c, eq.node_voltages_v))
            h = m(h)
    return out


def beta_sweep(spec, backend: str, betas, batch: int = 32, seed: int = 0, data: str | None = None,
               checkpoint=None) -> dict:
    """min cosine and max relative error against beta, centered and one-sided."""
    probe, state, x, y, _ = prepare(spec, backend, None, batch, seed, data, checkpoint)
    out = {"betas_v": list(map(float, betas))}
    with Progress(batch * (1 + 2 * len(betas)), f"gradcheck {probe.name} beta sweep") as bar:
        exact, _, _ = model_gradients(spec, "reference", "implicit", x, y, seed=seed, checkpoint=state)
        bar.update(batch)
        for mode, centered in (("centered", True), ("one_sided", False)):
            cos, rel = [], []
            for b in betas:
                est, _, _ = model_gradients(spec, backend, "ep", x, y, beta_v=float(b), centered=centered, seed=seed,
                                            checkpoint=state)
                bar.update(batch)
                rows = compare(est, exact)
                cos.append(min(r["cosine"] for r in rows))
                rel.append(max(r["rel_error"] for r in rows))
            out[mode] = {"min_cosine": cos, "max_rel_error": rel}
    return out


def plot_sweep(sweep: dict, path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("centered", "o-"), ("one_sided", "s--")):
        axes[0].loglog(sweep["betas_v"], np.maximum(1e-16, 1 - np.array(sweep[mode]["min_cosine"])), style, label=mode)
        axes[1].loglog(sweep["betas_v"], sweep[mode]["max_rel_error"], style, label=mode)
    axes[0].set(xlabel="beta (V)", ylabel="1 - min cosine over tensors", title="direction")
    axes[1].set(xlabel="beta (V)", ylabel="max relative error over tensors", title="magnitude")
    axes[1].axhline(MAX_REL_ERROR, color="grey", lw=0.8, ls=":")
    axes[0].axhline(1 - MIN_COSINE, color="grey", lw=0.8, ls=":")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
