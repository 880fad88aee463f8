"""The command's entry point (``ffebm``, ``python -m ffebm_sim``), importing nothing at start-up.

multiprocessing's ``spawn`` starts each ngspice worker process
(:mod:`ffebm_sim.backends.pool`) by running the parent's main script again, as
``__mp_main__``, before the worker's own code. The ``ffebm`` script generated
from the entry point imports it at its top, so an entry point in
:mod:`ffebm_sim.cli` would make every worker import torch and the whole
command line (1219 modules instead of 283, measured). The CLI is therefore
imported inside :func:`entry`. ``python -m ffebm_sim`` is skipped by spawn
altogether; ``python -m ffebm_sim.cli`` works too, but its workers import the CLI.
"""


def entry() -> None:
    """Run ``ffebm`` (:func:`ffebm_sim.cli.main`) and exit with its code."""
    from .cli import entry as run
    run()


if __name__ == "__main__":
    entry()
