"""The ``analyze`` click command (registered by ``ffebm_sim.cli`` with ``cli.add_command(analyze)``)."""

from __future__ import annotations

import json

import click

from ..errors import SpecError
from .analysis import DATA_CHOICES, AnalyzeOptions, _clean, analyze_model, check_out_dir, write_outputs


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A checkpoint of `ffebm train` (RUN_DIR/checkpoints/epoch_NNNN.pt).")
@click.option("--data", type=click.Choice(DATA_CHOICES), default=None,
              help="Inputs from this data set's test split (default: by the model's input size).")
@click.option("--samples", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Test inputs per block (each: an op per phase and a transient per phase).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the sample draw.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for report.md, analysis.json, figures/, tables/.")
@click.option("--force", is_flag=True, help="Replace an earlier `ffebm analyze` output in --out (only that; only once the new one is complete).")
@click.option("--device", help="Device preset for the tables' pulse counts (ideal, reram, ecram, pcm).")
@click.option("--node-capacitance", type=float, help="F per free node (overrides the spec; default 1e-14).")
@click.option("--wire-capacitance", type=float, help="F per crossbar cell, half to each end (overrides the spec; default 0).")
@click.option("--no-nudged", is_flag=True, help="Free phase only (skip EP's nudged phases).")
@click.option("--json", "as_json", is_flag=True, help="Print analysis.json as the last line of stdout.")
def analyze(model, checkpoint, data, samples, seed, out, force, device, node_capacitance, wire_capacitance,
            no_nudged, as_json):
    """Power, settling time, energy per inference and conductance tables of a trained MODEL, by ngspice."""
    inputs = (model, checkpoint)
    check_out_dir(out, force, inputs)   # refuse before minutes of simulation, not after
    if device is not None:
        from ..hardware import get_device
        get_device(device, 0.0, 1.0)
    options = AnalyzeOptions(samples=samples, data=data, seed=seed, device=device,
                             node_capacitance_f=node_capacitance, wire_capacitance_f=wire_capacitance,
                             nudged=not no_nudged)
    analysis, files = analyze_model(model, checkpoint, options,
                                    log=lambda m: click.echo(f"analyze: {m}", err=True))
    write_outputs(out, files, force=force, inputs=inputs)
    for b in analysis["blocks"]:
        click.echo(f"{b['name']}: power {_fmt(b['power_w_mean'], 'W')}, settling median {_fmt(b['settling_s_median'], 's')} "
                   f"worst {_fmt(b['settling_s_worst'], 's')}, energy/inference {_fmt(b['energy_j_per_inference'], 'J')}",
                   err=as_json)
    click.echo(f"wrote {out}/report.md", err=True)
    if as_json:
        click.echo(json.dumps(_clean(analysis)))


def _fmt(x, unit):
    from .report import _si
    return _si(x, unit)


__all__ = ["analyze", "SpecError"]
