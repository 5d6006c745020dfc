"""On-disk cache of rank distributions: one checksummed JSON file per key, written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from planner.fileio import atomic_write_text

log = logging.getLogger(__name__)

#: Bump when the stored payload or the estimators change, so old entries are never reused.
CACHE_FORMAT = "rank-cache/2"
ENV_VAR = "SPARSITY_PLANNER_CACHE_DIR"


def default_cache_dir() -> Path | None:
    """``$SPARSITY_PLANNER_CACHE_DIR`` if set ("" or "off" disables the disk cache), else the
    user's cache home (``~/.cache/sparsity-planner`` on Linux)."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        if env.strip().lower() in ("", "off", "none", "0"):
            return None
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sparsity-planner", appauthor=False))


def _checksum(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class DiskCache:
    """Key -> JSON payload. Entries carry their key and a checksum; anything that does not
    verify is treated as missing (and overwritten), never trusted. Concurrent writers are safe:
    each writes its own temporary file and renames it into place."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        # the format is part of the name: entries of another format are simply not found
        return self.directory / (hashlib.sha256(f"{CACHE_FORMAT}|{key}".encode()).hexdigest()[:40] + ".json")

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("rank cache: cannot read %s (%s); recomputing", path, exc)
            return None
        try:
            entry = json.loads(raw.decode("utf-8"))  # a corrupt byte may be invalid UTF-8
            ok = (
                isinstance(entry, dict)
                and entry.get("format") == CACHE_FORMAT
                and entry.get("key") == key
                and isinstance(entry.get("payload"), dict)
                and entry.get("checksum") == _checksum(entry["payload"])
            )
        except (ValueError, TypeError):
            ok = False
        if not ok:
            log.warning("rank cache: entry %s is corrupt or stale; recomputing", path)
            return None
        return entry["payload"]

    def put(self, key: str, payload: dict) -> None:
        entry = {"format": CACHE_FORMAT, "key": key, "payload": payload, "checksum": _checksum(payload)}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self._path(key), json.dumps(entry, sort_keys=True))
        except OSError as exc:  # a read-only or full cache must not break planning
            log.warning("rank cache: cannot write to %s (%s)", self.directory, exc)
