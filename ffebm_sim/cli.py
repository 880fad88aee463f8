"""``ffebm``: a thin command line over the library.

Bad input is one line on stderr (``ffebm: error: ...``) and exit code 2, with
no traceback and no partial output file.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import click
import numpy as np
import torch

from .backends import BACKENDS, Nudge, get_backend
from .circuit import free_node_names
from .errors import SpecError
from .io import atomic_write_text, read_inputs
from .dialects import FORMATS
from .netlist import emit_deck, emit_subckt, subckt_name
from .outputs import atomic_write_bytes, check_output_file
from .model import resolve_block
from .validate import check_solver_memory


class _Exit(Exception):
    def __init__(self, code: int):
        self.code = code


def _json(obj) -> str:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ffebm-sim")
def cli():
    """Analog energy blocks as SPICE netlists, solved by ngspice and by torch."""


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False), help="One input vector (.npy/.json/.csv/.txt).")
@click.option("--seed", type=click.IntRange(min=0), help="Draw the input vector uniformly in [-1, 1] with this seed.")
@click.option("--reduced", is_flag=True, help="Replace the source-driven input layer by its exact Norton equivalent.")
@click.option("--format", "deck_format", type=click.Choice(FORMATS), default="ngspice", show_default=True,
              help="Deck dialect: ngspice (.control block), spice3 (plain .op/.print/.temp), gnucap (spice3 with "
                   "gnucap's PWL element), xyce, ltspice (docs/formats.md).")
@click.option("--subckt", is_flag=True, help="Write the block as a .subckt library (OUTPUT with suffix .lib) and "
                                            "OUTPUT as a testbench that includes it.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Deck to write (.cir); with --subckt the testbench.")
@click.option("--block", type=int, help="Model specs: which energy block (1-based).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Model specs: take trained conductances from a checkpoint.")
def netlist(spec, inputs_file, seed, reduced, deck_format, subckt, output, block, checkpoint):
    """Write a standalone SPICE deck of the block in SPEC (runs with `ngspice -b`), or with
    --subckt a placeable subcircuit library and its testbench."""
    inputs = (spec, inputs_file, checkpoint)
    library = None
    if subckt:
        if reduced:
            raise SpecError("--subckt and --reduced: a reduced deck bakes the inputs into the block, so it cannot be "
                            "placed as a subcircuit; drop one of them")
        library = Path(output).with_suffix(".lib")
        if library == Path(output):
            raise SpecError(f"--output: {output} is where the library goes with --subckt; give the testbench path, "
                            f"e.g. {Path(output).with_suffix('.cir')}")
        check_output_file(library, "--output (library)", inputs=inputs)
    check_output_file(output, "--output", inputs=inputs)
    circuit = resolve_block(spec, block, checkpoint)
    check_solver_memory(circuit, 0, "spec", spec, backends=(), deck=True)
    if inputs_file and seed is not None:
        raise SpecError("--inputs and --seed: give one of them, not both")
    u = None
    if inputs_file:
        data = read_inputs(inputs_file, circuit.n_inputs)
        if data.shape[0] != 1:
            raise SpecError(f"--inputs: {inputs_file} holds {data.shape[0]} samples; a deck takes one input vector")
        u = data[0]
    elif seed is not None:
        u = np.random.default_rng(seed).uniform(-1.0, 1.0, circuit.n_inputs)
    args = ["ffebm netlist", spec] + (["--inputs", inputs_file] if inputs_file else []) + \
        (["--seed", str(seed)] if seed is not None else []) + (["--reduced"] if reduced else []) + \
        (["--format", deck_format] if deck_format != "ngspice" else []) + (["--subckt"] if subckt else []) + \
        (["--block", str(block)] if block else []) + (["--checkpoint", checkpoint] if checkpoint else []) + ["-o", output]
    command = " ".join(args)
    if subckt:
        lib_text, bench = emit_subckt(circuit, u, library_file=library.name, command=command, dialect=deck_format)
        atomic_write_text(library, lib_text)
        atomic_write_text(output, bench)
        click.echo(f"wrote {library} (subcircuit {subckt_name(circuit)}) and {output} (its testbench)", err=True)
        return
    atomic_write_text(output, emit_deck(circuit, u, reduced=reduced, command=command, dialect=deck_format))
    click.echo(f"wrote {output}", err=True)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--backend", default="reference", show_default=True, help=f"One of: {', '.join(BACKENDS)}.")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False), help="Input vectors, one per row.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random input when no --inputs.")
@click.option("--reduced", is_flag=True, help="ngspice: solve the Norton-reduced deck.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--block", type=int, help="Model specs: which energy block (1-based).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Model specs: take trained conductances from a checkpoint.")
def solve(spec, backend, inputs_file, seed, reduced, as_json, block, checkpoint):
    """Solve the block's free equilibrium and print every node voltage."""
    circuit = resolve_block(spec, block, checkpoint)
    options = {"reduced": reduced} if backend == "ngspice" else {}
    if reduced and backend != "ngspice":
        raise SpecError("--reduced: only the ngspice backend has decks; drop it or use --backend ngspice")
    solver = get_backend(backend, **options)
    u = read_inputs(inputs_file, circuit.n_inputs) if inputs_file else \
        np.random.default_rng(seed).uniform(-1.0, 1.0, (1, circuit.n_inputs))
    check_solver_memory(circuit, u.shape[0], "--inputs" if inputs_file else "spec", inputs_file or spec,
                        backends=(backend,))
    eq = solver.solve(circuit, torch.from_numpy(u))
    names = free_node_names(circuit)
    if as_json:
        click.echo(_json({"backend": backend, "nodes": names, "node_voltages_v": eq.node_voltages_v.tolist(),
                          "source_currents_a": eq.source_currents_a.tolist(), "converged": eq.converged.tolist(),
                          "messages": list(eq.messages)}))
    else:
        for b in range(u.shape[0]):
            click.echo(f"# sample {b}: {'converged' if eq.converged[b] else eq.messages[b]}")
            for name, v in zip(names, eq.node_voltages_v[b].tolist()):
                click.echo(f"{name:>10s} {v: .12e} V")
    if not eq.ok:
        raise _Exit(1)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--samples", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--nudge", is_flag=True, help="Also compare nudged equilibria (random output nudges).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--block", type=int, help="Model specs: which energy block (1-based).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Model specs: take trained conductances from a checkpoint.")
@click.option("--simulator", type=click.Choice(["ngspice", "gnucap"]), default="ngspice", show_default=True,
              help="ngspice: every backend and deck form within 1e-9 V; gnucap: gnucap -b on the spice3/gnucap deck "
                   "against ngspice and the reference (1e-5 V at 27 C, 1e-3 V elsewhere; docs/formats.md).")
@click.option("--reduced", is_flag=True, help="With --simulator gnucap: the Norton-reduced decks (same voltages; "
                                            "gnucap reads large physical decks slowly).")
def verify(spec, samples, nudge, seed, as_json, block, checkpoint, simulator, reduced):
    """Solve random inputs with every backend and deck form (or gnucap); exit 0 iff they agree."""
    from .verify import verify_block, verify_gnucap
    circuit = resolve_block(spec, block, checkpoint)
    check_solver_memory(circuit, samples, "--samples", samples, backends=("reference", "ngspice"))
    if reduced and simulator != "gnucap":
        raise SpecError("--reduced: verify compares both deck forms with ngspice already; it selects the deck "
                        "form only with --simulator gnucap")
    if simulator == "gnucap":
        from .gnucap import GnucapFailed
        try:
            report = verify_gnucap(circuit, samples=samples, nudge=nudge, seed=seed, reduced=reduced)
        except GnucapFailed as e:
            click.echo(f"ffebm: error: {e}", err=True)
            raise _Exit(1) from None
        if as_json:
            click.echo(_json(report))
        else:
            dv = report["max_abs_dv_volts"]
            click.echo(f"{report['block']}: {samples} samples ({report['phases'][0]}, {report['deck']} decks) at "
                       f"{report['temperature_c']:g} C")
            click.echo(f"max |dV| gnucap-ngspice {dv['gnucap_vs_ngspice']:.3e} V, gnucap-reference "
                       f"{dv['gnucap_vs_reference']:.3e} V (tolerance {report['tolerance_volts']:.0e} V), "
                       f"ngspice-reference {dv['ngspice_vs_reference']:.3e} V")
            for f in report["failures"]:
                click.echo(f"failure: {f}")
            click.echo("AGREE" if report["ok"] else "DISAGREE")
        if not report["ok"]:
            raise _Exit(1)
        return
    report = verify_block(circuit, samples=samples, nudge=nudge, seed=seed)
    if as_json:
        click.echo(_json(report))
    else:
        click.echo(f"{report['block']}: {samples} samples, phases {', '.join(report['phases'])}, "
                   f"backends {', '.join(report['backends'])}")
        click.echo(f"max |dV| = {report['max_abs_dv_volts']:.3e} V (tolerance {report['tolerance_volts']:.0e} V), "
                   f"max |dI_src| = {report['max_abs_di_amps']:.3e} A, "
                   f"nonlinear elements carrying > 0.1 uA: {100 * report['nonlinear_active_fraction']:.1f}%")
        if "ideal_vs_emitted_dv_volts" in report:
            click.echo(f"ideal clip vs emitted steep junctions: {report['ideal_vs_emitted_dv_volts']:.3e} V")
        for f in report["failures"]:
            click.echo(f"failure: {f}")
        click.echo("AGREE" if report["ok"] else "DISAGREE")
    if not report["ok"]:
        raise _Exit(1)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--backend", default="reference", show_default=True, help=f"Backend for EP: {', '.join(BACKENDS)}.")
@click.option("--beta", type=float, default=None, help="EP nudge amplitude in volts (default: the spec's, 1e-3 V).")
@click.option("--batch", type=click.IntRange(1, 10_000), default=32, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--data", type=click.Choice(["digits", "mnist-5k"]), default=None,
              help="Batch source (default: by the model's input size).")
@click.option("--one-sided", is_flag=True, help="One-sided EP (+beta only) instead of centered.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), help="PNG: error against a sweep of beta, centered and one-sided.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Check at trained parameters from a checkpoint.")
def gradcheck(model, backend, beta, batch, seed, data, one_sided, as_json, plot, checkpoint):
    """EP gradient vs the exact implicit gradient for every parameter tensor, on one batch."""
    from .gradcheck import beta_sweep, gradcheck as run, plot_sweep
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise SpecError(f"--beta: {beta!r}; the nudge amplitude in volts, a finite number > 0")
    if plot:
        check_output_file(plot, "--plot", inputs=(model, checkpoint))
    report = run(model, backend=backend, beta_v=beta, batch=batch, seed=seed, data=data, centered=not one_sided,
                 checkpoint=checkpoint)
    if plot:
        sweep = beta_sweep(model, backend, np.logspace(-6, -0.5, 12), batch=batch, seed=seed, data=data,
                           checkpoint=checkpoint)
        png = io.BytesIO()
        plot_sweep(sweep, png, f"{report['model']}: EP ({backend}) vs implicit gradient, batch {batch}")
        atomic_write_bytes(plot, png.getvalue())
        report["sweep"] = sweep
    if as_json:
        click.echo(_json(report))
    else:
        click.echo(f"{report['model']} on {report['data']}, batch {batch}, EP on {backend} "
                   f"({'centered' if not one_sided else 'one-sided'}, beta {report['beta_v']} V) vs implicit:")
        for r in report["tensors"]:
            click.echo(f"  {r['name']:<24s} {str(r['shape']):<12s} cosine {r['cosine']:.9f}  rel_error {r['rel_error']:.2e}")
        click.echo("junctions carrying > 0.1 uA per energy block: " +
                   ", ".join(f"{100 * f:.1f}%" for f in report["nonlinear_active_fraction"]))
        click.echo(f"min cosine {report['min_cosine']:.9f}, max rel error {report['max_rel_error']:.2e}: "
                   f"{'PASS' if report['ok'] else 'FAIL'}")
    if not report["ok"]:
        raise _Exit(1)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", default="digits", show_default=True, help="digits, mnist-5k or mnist (with --data-dir).")
@click.option("--data-dir", type=click.Path(), help="Directory with the four MNIST IDX files (for --data mnist).")
@click.option("--backend", default="reference", show_default=True, help=f"One of: {', '.join(BACKENDS)}.")
@click.option("--gradient", default="ep", show_default=True, help="ep (equilibrium propagation) or implicit (exact).")
@click.option("--epochs", type=int, help="Epochs (default: the spec's [training], else 10).")
@click.option("--batch-size", type=int, help="Mini-batch size (default: the spec's, else 32).")
@click.option("--lr", type=float, help="Adam learning rate of the digital blocks.")
@click.option("--lr-analog", type=float,
              help="Conductances' learning rate, in units of each block's unit: Adam's step size (default: the "
                   "spec's, else 2e-3); with --device the update rule's step per unit gradient, which sets the "
                   "pulses requested and needs a different value than Adam's (default per preset and rule, see "
                   "docs/hardware.md).")
@click.option("--device", help="Update conductances as pulses on devices of this preset "
                               "(ideal, reram, ecram, pcm) instead of Adam; digital blocks keep Adam. "
                               "cpu or cuda: the reference solver's torch device (as --torch-device).")
@click.option("--update", help="With --device: the update rule, sgd (default), mixed, tiki-taka or shd.")
@click.option("--update-option", "update_options", multiple=True, metavar="KEY=VALUE",
              help="With --device: a rule option, e.g. coupling=0.02 (repeatable).")
@click.option("--freeze-analog", is_flag=True,
              help="Keep every conductance of the energy blocks (and their bias conductances) at its initial "
                   "value; the digital blocks train. Not with --device or --freeze-digital.")
@click.option("--freeze-digital", is_flag=True,
              help="Keep every parameter of the digital blocks (weights, biases, BatchNorm's scale and shift) "
                   "at its initial value; the conductances train. BatchNorm's running statistics still "
                   "update and Dropout still drops.")
@click.option("--beta", type=float, help="EP nudge amplitude in volts (default: each block's spec).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--on-failure", type=click.Choice(["stop", "skip"]),
              help="A sample no solver retry converges: stop the run (default, or the spec's [training] "
                   "on_failure) or skip the sample (counted). Its deck goes to RUN_DIR/failed/ either way.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last good checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json as the last line of stdout.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="ngspice worker processes (one libngspice each).")
@click.option("--scheduler", help="ngspice: a Dask scheduler address tcp://HOST:PORT instead of local workers.")
@click.option("--torch-device", help="The reference solver's torch device: cpu (default) or cuda "
                                     "(large batches of large blocks, docs/speed.md).")
def train(model, data, data_dir, backend, gradient, epochs, batch_size, lr, lr_analog, device, update, update_options,
          freeze_analog, freeze_digital, beta, seed, on_failure, out, resume, as_json, workers, scheduler,
          torch_device):
    """Train an ff-EBM: backprop through digital blocks, EP (or implicit) through energy blocks.

    With --device PRESET the conductances are updated by pulses on devices of
    that preset (one update rule per energy block, --update), the digital
    blocks by Adam. --freeze-analog or --freeze-digital holds one kind of
    parameter at its initial values (the ablations). The first line on stdout
    (stderr with --json) gives the model's analog and digital parameter counts.
    """
    from .backends import get_backend as _check_backend
    from .train import TrainConfig, config_with_spec_defaults, train as run_training
    if backend not in BACKENDS:
        _check_backend(backend)
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise SpecError(f"--beta: {beta!r}; the nudge amplitude in volts, a finite number > 0")
    chosen = (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("lr_analog", lr_analog),
              ("on_failure", on_failure))
    given = {k for k, v in chosen if v is not None}
    if (workers > 1 or scheduler) and backend != "ngspice":
        raise SpecError("--workers/--scheduler: they spread ngspice solves; use them with --backend ngspice")
    if scheduler is not None:
        if workers > 1:
            raise SpecError(f"--scheduler and --workers {workers}: give one of them; the Dask cluster's workers "
                            f"do the solves with --scheduler, --workers N starts N local processes")
        from .backends.dask_engine import check_scheduler_address
        scheduler = check_scheduler_address(scheduler)
    if device is not None and device.split(":")[0] in ("cpu", "cuda"):
        # not a conductance preset: the reference solver's torch device, as --torch-device
        if torch_device is not None and torch_device != device:
            raise SpecError(f"--device {device} and --torch-device {torch_device}: give the torch device once")
        device, torch_device = None, device
    options = {}
    if torch_device is not None:
        if backend != "reference":
            raise SpecError(f"--torch-device {torch_device}: it places the reference solver; use it with "
                            "--backend reference")
        from .backends.reference import torch_device as _check_device
        options["device"] = str(_check_device(torch_device))
    if workers > 1:
        options["workers"] = workers
    if scheduler:
        options["scheduler"] = scheduler
    rule_options = {}
    for item in update_options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--update-option: {item!r}; KEY=VALUE, e.g. coupling=0.02")
        try:
            rule_options[key.strip()] = json.loads(value)
        except ValueError:
            raise SpecError(f"--update-option: {item!r}; the value must be a number, true/false or null") from None
    config = TrainConfig(model=str(model), out=str(out), data=data, data_dir=data_dir, backend=backend,
                         gradient=gradient, seed=seed, beta_v=beta, backend_options=options,
                         device=device, update=update, update_options=rule_options,
                         freeze_analog=freeze_analog, freeze_digital=freeze_digital,
                         **{k: v for k, v in chosen if v is not None})
    if not resume:
        config = config_with_spec_defaults(config, given)
    # On resume, the flags given on this command line are compared with the stored run.
    ctx = click.get_current_context()
    flags_given = {p for p in ctx.params
                   if ctx.get_parameter_source(p) not in (click.core.ParameterSource.DEFAULT, None)}
    fields_given = {TRAIN_FIELDS.get(p, p) for p in flags_given} & set(TrainConfig.__dataclass_fields__)
    summary = run_training(config, resume=resume, epochs_given=epochs is not None,
                           on_failure_given=on_failure is not None, given=fields_given,
                           info=lambda line: click.echo(line, err=as_json))
    click.echo(f"test accuracy {100 * summary['test_accuracy']:.2f}% after {summary['epochs']} epochs "
               f"({summary['seconds']:.0f} s); learning curves: {summary['learning_curves']}", err=as_json)
    if as_json:
        click.echo(_json(summary))


#: train's click parameters that are spelled differently in TrainConfig.
TRAIN_FIELDS = {"beta": "beta_v", "workers": "backend_options", "scheduler": "backend_options",
                "torch_device": "backend_options",
                "update_options": "update_options"}

from .bench import bench  # noqa: E402  (a click group defined in its own module)

cli.add_command(bench)
from .analyze.cli import analyze  # noqa: E402

cli.add_command(analyze)


def main(argv=None) -> int:
    """Entry point: one line and exit 2 for bad input, never a traceback for it."""
    from .backends.session import NgspiceUnavailable
    from .failures import RunStopped
    # The solves here are many small dense problems: torch's intra-op threads do
    # not help them, and spinning OpenMP threads slowed the reference solver
    # 100x when other processes (ngspice workers) shared the cores (measured).
    torch.set_num_threads(1)
    from .interrupt import Interrupted, signals_raise, stop_resource_tracker
    from .progress import close_all
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with signals_raise():
            try:
                cli.main(args=args, prog_name="ffebm", standalone_mode=False)
            finally:
                close_all()          # no progress line after the command's last word
    except Interrupted as e:         # the command's finally blocks have stopped its workers
        stop_resource_tracker()
        resumable = "train" in args[:1] and "--out" in args
        click.echo(f"ffebm: interrupted ({e.name})" + ("; finished epochs are kept, continue with --resume"
                                                        if resumable else ""), err=True)
        return e.exit_code
    except _Exit as e:
        return e.code
    except click.exceptions.Abort:
        click.echo("ffebm: aborted", err=True)
        return 130
    except click.UsageError as e:
        click.echo(f"ffebm: error: {' '.join(e.format_message().split())}", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"ffebm: error: {' '.join(e.format_message().split())}", err=True)
        return 2
    except (SpecError, NgspiceUnavailable) as e:
        click.echo(f"ffebm: error: {e}", err=True)
        return 2
    except RunStopped as e:          # not bad input: the run failed (its finished epochs are kept)
        click.echo(f"ffebm: error: {e}", err=True)
        return 1
    except OSError as e:              # the path the user named (never a temporary file), one line
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"ffebm: error: {where}{' '.join(str(e.strerror or e).split())}", err=True)
        return 2
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
