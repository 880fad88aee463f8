"""The report's pictures (matplotlib, Agg; every figure returned as PNG bytes)."""

from __future__ import annotations

import io

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _time_unit(t_max: float) -> tuple[float, str]:
    for scale, unit in ((1e-12, "ps"), (1e-9, "ns"), (1e-6, "us"), (1e-3, "ms")):
        if t_max < 1000 * scale:
            return scale, unit
    return 1.0, "s"


def conductance_histograms(name: str, conductances: list[np.ndarray], g_max_s: float | None) -> bytes:
    plt = _plt()
    m = len(conductances)
    fig, axes = plt.subplots(1, m, figsize=(max(5.5, 4.2 * m), 3.4), squeeze=False)
    for k, (ax, g) in enumerate(zip(axes[0], conductances), start=1):
        g = np.ravel(g) * 1e6
        ax.hist(g, bins=40, color="C0")
        title = f"layer {k}: {g.size} cells, {int((g == 0).sum())} open"
        if g_max_s and g_max_s * 1e6 <= 1.5 * max(float(g.max()), 1e-30):
            ax.axvline(g_max_s * 1e6, color="k", ls="--", lw=1, label="g_max")
            ax.legend(fontsize=8)
        elif g_max_s:
            title += f"\n(g_max = {g_max_s * 1e6:.4g} uS, off scale)"
        ax.set(xlabel="conductance (uS)", ylabel="cells", title=title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: trained conductances")
    return _png(fig)


def iv_curve(name: str, layer: int, kind: str, v: np.ndarray, i_spice: np.ndarray, i_law: np.ndarray,
             v_range: tuple[float, float] | None) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    ax = axes[0]
    ax.plot(v, i_spice * 1e6, "C0", lw=2, label="ngspice (emitted deck)")
    ax.plot(v, i_law * 1e6, "C1--", lw=1, label="ffebm_sim.devices law")
    if v_range is not None:
        ax.axvspan(*v_range, color="C2", alpha=0.15, label="node voltages at equilibrium")
        lim = np.abs(i_spice[(v >= v_range[0]) & (v <= v_range[1])]).max() if np.any((v >= v_range[0]) & (v <= v_range[1])) else 0
        lim = max(lim * 1.5, 1e-9) * 1e6
        ax.set_ylim(-lim, lim)
    ax.set(xlabel="node voltage (V)", ylabel="current node -> element (uA)", title="linear")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.semilogy(v, np.abs(i_spice), "C0", lw=2)
    ax.semilogy(v, np.abs(i_law), "C1--", lw=1)
    if v_range is not None:
        ax.axvspan(*v_range, color="C2", alpha=0.15)
    ax.set(xlabel="node voltage (V)", ylabel="|current| (A)", title="log")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: layer {layer} nonlinearity ({kind}) as emitted")
    return _png(fig)


def node_voltage_histograms(name: str, layers: list[np.ndarray]) -> bytes:
    plt = _plt()
    m = len(layers)
    fig, axes = plt.subplots(1, m, figsize=(max(5.5, 4.2 * m), 3.4), squeeze=False)
    for k, (ax, x) in enumerate(zip(axes[0], layers), start=1):
        ax.hist(np.ravel(x), bins=40, color="C2")
        ax.set(xlabel="node voltage (V)", ylabel="nodes x samples", title=f"layer {k} ({x.shape[1]} nodes)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: free-phase node voltages at equilibrium")
    return _png(fig)


def settling_waveforms(name: str, panels: list[dict]) -> bytes:
    """``panels``: dicts with title, t (s), v (n, k), final (k,), band (k,), settle (s), labels,
    and optionally offset (k,): plot ``v - offset`` in mV (the nudged phases)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        t_end = max(float(p["t"][-1]), 1e-30)
        scale, unit = _time_unit(t_end)
        # a nudge moves the outputs by ~beta: show the displacement from the start, in mV
        offset = p.get("offset")
        vscale, ylabel = (1.0, "output node voltage (V)") if offset is None else \
            (1e3, "output - free equilibrium (mV)")
        offset = np.zeros(p["v"].shape[1]) if offset is None else offset
        for j in range(p["v"].shape[1]):
            line, = ax.plot(p["t"] / scale, (p["v"][:, j] - offset[j]) * vscale, lw=1.5, label=p["labels"][j])
            ax.fill_between([0, t_end / scale], (p["final"][j] - offset[j] - p["band"][j]) * vscale,
                            (p["final"][j] - offset[j] + p["band"][j]) * vscale,
                            color=line.get_color(), alpha=0.12, lw=0)
        if np.isfinite(p["settle"]):
            ax.axvline(p["settle"] / scale, color="k", ls="--", lw=1, label=f"settled {p['settle'] / scale:.3g} {unit}")
        ax.set(xlabel=f"time ({unit})", ylabel=ylabel, title=p["title"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: settling (bands: the 1% criterion)")
    return _png(fig)
