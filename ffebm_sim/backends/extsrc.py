"""A chunk's source values served to ngspice from memory: the ``EXTERNAL`` sources' callback, in C.

The shared libngspice evaluates an independent source declared ``EXTERNAL``
(``I1 a b external``) by calling the host's ``GetISRCData`` / ``GetVSRCData``
callback with the simulation time and the source's instance name, at every
load of every Newton iteration (``isrcload.c``): about 57,000 calls per EP batch of
32 on the ``[784, 100, 10]`` block. A Python callback costs about 4 us a call
(measured: 248 ms per batch, against 96 ms for the whole batch the other way);
this module's callback is C, compiled once with cffi (API mode) into a cache
directory, and looks the value up in a numpy array the session hands it.

The values of one job are an ``(n, m)`` float64 array: row ``k`` is sample
``k``, column ``c`` the source ``names[c]``. At time ``t`` the callback returns
row ``t`` itself when ``t`` is an integer (every accepted time point of
:meth:`~.session.NgspiceSession.tran_samples`), the linear interpolation of
rows ``floor(t)`` and ``floor(t) + 1`` between them (the points ngspice inserts
after a failed step: what a ``PWL`` source through the samples gives), row 0
before ``t = 0`` and the last row after the last sample. ngspice multiplies the
value by its source-stepping factor itself (``loadDone`` in ``isrcload.c``), as
for any other source. A name the table does not hold, or a call while no values
are set, returns 0 and is counted (:func:`misses`): the caller treats such a
transient as failed.

Instance names are looked up once per name pointer (ngspice passes the
instance's own name string, which lives as long as the circuit); the table is
reset whenever the names are set again (:func:`set_names`, once per loaded
circuit).

:func:`library` returns None when the extension cannot be built (no C
compiler, no cffi build support): the caller then gives the sources their
values the other way (``PWL`` sources and ``alter``, :mod:`.jobs`).
``FFEBM_NGSPICE_EXTERNAL=0`` turns this path off.

Only numpy and cffi (PySpice's own dependency): no torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading

import numpy as np

log = logging.getLogger("ffebm_sim.extsrc")

#: The C side of the callback (see the module docstring).
C_SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FFEBM_SLOTS 16384
static const double *vals;
static long nrow, ncol, missed;
static char **names;
static long nnames;
static const char *slot_key[FFEBM_SLOTS];
static long slot_col[FFEBM_SLOTS];

void ffebm_set_values(const double *v, long n, long m) { vals = v; nrow = n; ncol = m; }

long ffebm_misses(void) { long k = missed; missed = 0; return k; }

int ffebm_set_names(char **nm, long m) {
    long i;
    for (i = 0; i < nnames; i++) free(names[i]);
    free(names);
    nnames = 0;
    memset(slot_key, 0, sizeof slot_key);
    names = calloc(m > 0 ? m : 1, sizeof *names);
    if (!names) return -1;
    for (i = 0; i < m; i++) {
        names[i] = strdup(nm[i]);
        if (!names[i]) return -1;
        nnames = i + 1;
    }
    return 0;
}

static long column(const char *p) {
    size_t h = ((size_t)p >> 4) % FFEBM_SLOTS;
    long i, probes;
    for (probes = 0; slot_key[h] && probes < FFEBM_SLOTS; probes++) {
        if (slot_key[h] == p) return slot_col[h];
        h = (h + 1) % FFEBM_SLOTS;
    }
    for (i = 0; i < nnames; i++)
        if (!strcasecmp(names[i], p)) {
            if (!slot_key[h]) { slot_key[h] = p; slot_col[h] = i; }
            return i;
        }
    return -1;
}

int ffebm_source_value(double *value, double t, char *name, int ident, void *user) {
    long c = column(name), i;
    double k, f, a;
    (void)ident; (void)user;
    if (c < 0 || c >= ncol || !vals || nrow < 1) { missed++; *value = 0.0; return 0; }
    if (!(t > 0.0)) { *value = vals[c]; return 0; }
    k = floor(t);
    i = (long)k;
    if (i >= nrow - 1) { *value = vals[(nrow - 1) * ncol + c]; return 0; }
    f = t - k;
    a = vals[i * ncol + c];
    *value = (f == 0.0) ? a : a + f * (vals[(i + 1) * ncol + c] - a);
    return 0;
}
"""

C_DECLARATIONS = """
void ffebm_set_values(const double *v, long n, long m);
long ffebm_misses(void);
int ffebm_set_names(char **nm, long m);
int ffebm_source_value(double *value, double t, char *name, int ident, void *user);
"""

#: The callback's C signature, as ``ngSpice_Init_Sync`` takes it.
CALLBACK_TYPE = "int (*)(double *, double, char *, int, void *)"

_LOCK = threading.Lock()
_LIBRARY: object = None
_TRIED = False


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ffebm-sim")


def _module_name() -> str:
    key = hashlib.sha256((C_SOURCE + C_DECLARATIONS + sys.version).encode()).hexdigest()[:16]
    return f"_ffebm_extsrc_{key}"


def _build(name: str, target_dir: str) -> str:
    """Compile the extension into ``target_dir`` (atomically: built elsewhere, then renamed); its path."""
    from cffi import FFI
    ffi = FFI()
    ffi.cdef(C_DECLARATIONS)
    ffi.set_source(name, C_SOURCE, libraries=["m"])
    os.makedirs(target_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="build-", dir=target_dir)
    try:
        built = ffi.compile(tmpdir=work, verbose=False)
        final = os.path.join(target_dir, os.path.basename(built))
        os.replace(built, final)               # another process may have done the same: either file is good
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def enabled() -> bool:
    """False when ``FFEBM_NGSPICE_EXTERNAL=0`` (the PWL path is then used)."""
    return os.environ.get("FFEBM_NGSPICE_EXTERNAL", "1") != "0"


def library():
    """The compiled extension (a cffi module with ``ffi`` and ``lib``), or None when it cannot be
    built or ``FFEBM_NGSPICE_EXTERNAL=0``. Built on first use, then loaded from the cache."""
    global _LIBRARY, _TRIED
    if not enabled():
        return None
    with _LOCK:
        if _TRIED:
            return _LIBRARY
        _TRIED = True
        name, directory = _module_name(), _cache_dir()
        try:
            found = [f for f in os.listdir(directory) if f.startswith(name + ".")] if os.path.isdir(directory) else []
            path = os.path.join(directory, found[0]) if found else _build(name, directory)
            _LIBRARY = _load(name, path)
        except Exception as e:  # noqa: BLE001 - no compiler, no headers, read-only cache: use the PWL path
            log.info("ngspice EXTERNAL sources unavailable (%s); sources get PWL values with alter", e)
            _LIBRARY = None
        return _LIBRARY


def callback_address(lib) -> int:
    """The address of the C callback, to hand to ``ngSpice_Init_Sync`` (through any cffi instance)."""
    return int(lib.ffi.cast("uintptr_t", lib.ffi.addressof(lib.lib, "ffebm_source_value")))


class Table:
    """What the callback serves in this process: the names of the sources and one job's values."""

    def __init__(self, lib):
        self.lib = lib
        self.names: tuple[str, ...] | None = None
        self._values: np.ndarray | None = None
        self._keep: list = []

    def set_names(self, names: tuple[str, ...]) -> None:
        """The sources' instance names, column by column (call again whenever a circuit is loaded)."""
        ffi = self.lib.ffi
        strings = [ffi.new("char[]", name.encode("ascii")) for name in names]
        if self.lib.lib.ffebm_set_names(ffi.new("char *[]", strings), len(strings)) != 0:
            raise MemoryError("ffebm extsrc: out of memory for the source names")
        self.names = tuple(names)

    def forget_names(self) -> None:
        """The circuit is gone: its name pointers may be reused, so the table must be set again."""
        self.names = None

    def set_values(self, values: np.ndarray) -> None:
        """``(n, len(names))`` values; kept alive here until :meth:`clear_values`."""
        v = np.ascontiguousarray(values, dtype=np.float64)
        if self.names is None or v.ndim != 2 or v.shape[1] != len(self.names):
            raise ValueError("ffebm extsrc: values do not match the source names")
        self._values = v
        self.lib.lib.ffebm_set_values(self.lib.ffi.cast("double *", v.ctypes.data), v.shape[0], v.shape[1])
        self.lib.lib.ffebm_misses()            # start counting afresh

    def clear_values(self) -> int:
        """Stop serving values; the number of calls the table could not answer since :meth:`set_values`."""
        self.lib.lib.ffebm_set_values(self.lib.ffi.NULL, 0, 0)
        self._values = None
        return int(self.lib.lib.ffebm_misses())
