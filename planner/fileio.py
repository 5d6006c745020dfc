"""Atomic file writes: a reader sees the old file or the whole new one, never a part; and the
checks that let a command refuse an unwritable output before it starts any work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planner.errors import OutputError


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` in one line (``[Errno 28] No space left on device`` -> the reason)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def check_writable_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output file whose directory is missing, not a directory or not
    writable, or that is itself a directory."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"cannot write {what} {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is not a directory")
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: directory {parent} is not writable")
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse, before any work, an output directory that exists as a file, cannot be created, or
    is not writable (creating it if needed, as the command would)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: it is not writable")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``. Any
    failure (a read-only or full disk, Ctrl-C) removes the temporary file and leaves ``path`` as
    it was; an OS failure raises :class:`OutputError` naming ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
