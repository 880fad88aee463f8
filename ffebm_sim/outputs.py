"""One output policy for every command that writes (netlist, train, analyze, gradcheck --plot, bench).

- **Never onto an input.** An output file may not be (the same file as) anything the
  command read; an output directory may not be, or contain, an input.
- **Never delete what the tool did not write.** A directory the tool writes carries a
  marker file (:data:`MARKER`) naming the command. ``--force`` may replace only a
  directory whose marker names the same command; a directory holding anything else
  (files without a marker, the current directory or one above it) is refused.
- **Checked before the work.** :func:`check_output_dir` / :func:`check_output_file`
  run before the long work and probe that the place is writable; nothing is created
  by them.
- **Locked while used.** :func:`lock_dir` takes an exclusive ``flock`` on the marker:
  a second process on the same directory fails at once with one line.
- **All or nothing, with the umask, naming the user's path.** :func:`atomic_write_bytes`
  writes through a temporary file, fsyncs, sets the mode to ``0o666 & ~umask`` and
  renames; an ``OSError`` names the user-visible path, never the temporary file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
from pathlib import Path

from .errors import SpecError

MARKER = ".ffebm-output"
_umask_lock = threading.Lock()


def umask() -> int:
    with _umask_lock:
        old = os.umask(0o022)
        os.umask(old)
    return old


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def user_error(e: OSError, path: str | Path) -> OSError:
    """The same error naming ``path`` (what the user asked for), one line."""
    return OSError(e.errno, " ".join(str(e.strerror or e).split()), str(path))


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: all or nothing."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())          # mkstemp makes 0600; outputs honour the umask
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise user_error(e, path) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _resolved(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.realpath(os.fspath(p))))


def _same_file(a: Path, b: Path) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inputs(inputs) -> list[Path]:
    return [Path(p) for p in (inputs or ()) if p is not None]


def probe_writable(directory: Path, flag: str, shown: str | Path) -> None:
    """Create and remove a temporary file in ``directory`` (``os.access`` lies for root)."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".ffebm-probe."):
            pass
    except OSError as e:
        raise SpecError(f"{flag}: {shown}: not writable ({e.strerror or e}); choose a writable place") from None


def check_output_file(path: str | Path, flag: str, inputs=()) -> Path:
    """A file the command will write: not an input, not a directory, in an existing writable directory."""
    path = Path(path)
    for src in _inputs(inputs):
        if src.exists() and _same_file(path, src):
            raise SpecError(f"{flag}: {path} is an input of this command ({src}); write the output elsewhere")
    if path.is_dir():
        raise SpecError(f"{flag}: {path} is a directory; give a file path to write")
    parent = path.parent
    if not parent.is_dir():
        raise SpecError(f"{flag}: {parent}: no such directory; create it first")
    probe_writable(parent, flag, parent)
    return path


def marker_command(directory: Path) -> str | None:
    """The command named by the directory's marker, or None when the tool did not write it."""
    try:
        return (Path(directory) / MARKER).read_text().split("\n", 1)[0].strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def check_output_dir(out: str | Path, flag: str, command: str, inputs=(), force: bool = False,
                     reuse: bool = False) -> Path:
    """A directory ``command`` will write (or, with ``force``, replace); one line when it may not.

    ``reuse``: the caller continues its own earlier output in place (``train --resume``).
    """
    out = Path(out)
    shown = str(out)
    if out.exists() and not out.is_dir():
        raise SpecError(f"{flag}: {shown} is a file; give a directory")
    here = _resolved(out)
    cwd = _resolved(Path.cwd())
    if here == cwd or here in cwd.parents:
        raise SpecError(f"{flag}: {shown} is the current directory or holds it; give a new subdirectory")
    for src in _inputs(inputs):
        s = _resolved(src)
        if s == here or here in s.parents:
            raise SpecError(f"{flag}: {shown} holds an input of this command ({src}); write the output elsewhere")
    if out.is_dir():
        try:
            entries = sorted(p.name for p in out.iterdir())
        except OSError as e:
            raise SpecError(f"{flag}: {shown}: cannot be read ({e.strerror}); choose another directory") from None
        if entries:
            owner = marker_command(out)
            if owner is None:
                listed = ", ".join(entries[:3]) + (f" (and {len(entries) - 3} more)" if len(entries) > 3 else "")
                hint = " (--resume continues only a run of ffebm train)" if command == "train" else ""
                raise SpecError(f"{flag}: {shown} holds files ffebm did not write ({listed}); "
                                f"choose a new or empty directory{hint}")
            if owner != command:
                raise SpecError(f"{flag}: {shown} holds the output of `ffebm {owner}`; `ffebm {command}` never "
                                "replaces it; choose another directory")
            if not (force or reuse):
                if command == "train":
                    raise SpecError(f"{flag}: {shown} already holds a run; pass --resume to continue that run "
                                    "or choose a new directory")
                raise SpecError(f"{flag}: {shown} already holds files; pass --force to replace it or choose a "
                                "new directory")
        probe_writable(out, flag, shown)
    else:
        parent = out.parent
        if not parent.is_dir():
            raise SpecError(f"{flag}: {parent}: no such directory; create it first")
        probe_writable(parent, flag, parent)
    return out


def write_marker(directory: Path, command: str) -> None:
    atomic_write_bytes(Path(directory) / MARKER, f"{command}\n# written by ffebm; "
                       f"`ffebm {command} --force` may replace this directory\n".encode(), fsync=False)


class DirLock:
    """An exclusive flock on ``directory/MARKER`` held while a command uses the directory."""

    def __init__(self, directory: Path, flag: str = "--out"):
        self.directory, self.flag, self.fd = Path(directory), flag, None

    def acquire(self) -> "DirLock":
        path = self.directory / MARKER
        try:
            self.fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise user_error(e, path) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpecError(f"{self.flag}: {self.directory} is in use by another ffebm process; wait for it "
                                "to end or choose another directory") from None
            raise user_error(e, path) from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_not_locked(directory: Path, flag: str = "--out") -> None:
    """Fail at once when another process holds the directory (before any long work)."""
    if (Path(directory) / MARKER).is_file():
        DirLock(directory, flag).acquire().release()
