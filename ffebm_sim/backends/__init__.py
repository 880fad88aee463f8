"""Solvers of an energy block behind one contract (see :mod:`.base`).

Strings map to backends only here, at the config/CLI edge.

Importing this package loads nothing: the contract's names (:class:`~.base.Backend`,
:class:`~.base.Equilibrium`, :class:`~.base.Nudge`) and :class:`~.reference.ReferenceBackend`
are imported on first use (:func:`__getattr__`). Every module of the package is
imported with the package first, so this keeps a worker process, which imports
only :mod:`.worker` (numpy, the ngspice session and the job protocol), free of torch.
"""

from __future__ import annotations

from ..errors import SpecError

BACKENDS = ("reference", "ngspice")


def get_backend(name: str, **options):
    """A backend (a :class:`~.base.Backend`) by name; an unknown name says which are valid."""
    if name == "reference":
        from .reference import ReferenceBackend
        return ReferenceBackend(**options)
    if name == "ngspice":
        from .ngspice import NgspiceBackend
        return NgspiceBackend(**options)
    raise SpecError(f"backend: unknown backend {name!r}; valid backends are {', '.join(BACKENDS)}")


def __getattr__(name: str):
    """The contract's names and the reference backend, imported when first asked for."""
    if name in ("Backend", "Equilibrium", "Nudge"):
        from . import base
        return getattr(base, name)
    if name == "ReferenceBackend":
        from .reference import ReferenceBackend
        return ReferenceBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKENDS", "Backend", "Equilibrium", "Nudge", "ReferenceBackend", "get_backend"]
