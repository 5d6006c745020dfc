"""The on-disk rank cache: round trips, corruption is detected and repaired (never trusted),
concurrent writers, and switching the disk cache off."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from planner.core import rank
from planner.core.cache import ENV_VAR, DiskCache, default_cache_dir
from planner.core.rank import RankCache, rank_distribution

SHAPE, P, SEED = (30, 40), 0.05, 11  # a case with a wide rank range: several counts


@pytest.fixture
def count_sampling(monkeypatch):
    """Counts calls of the sampler; set ``.forbid = True`` to make any sampling fail."""

    class Counter:
        calls = 0
        forbid = False

    real = rank._adaptive_ranks

    def wrapped(*args, **kwargs):
        if Counter.forbid:
            raise AssertionError("sampled although the cache should have answered")
        Counter.calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(rank, "_adaptive_ranks", wrapped)
    return Counter


def reference(method="sampled"):
    return rank_distribution(*SHAPE, P, method, seed=SEED, cache=RankCache(disk=False))


def same(a, b):
    return a.kmin == b.kmin and a.samples == b.samples and np.array_equal(a.probs, b.probs)


def entry_files(directory):
    return sorted(p for p in Path(directory).iterdir() if p.suffix == ".json")


def key():
    return RankCache.key(min(SHAPE), max(SHAPE), P, "sampled", SEED)


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("method", ["sampled", "svd"])
def test_disk_round_trip(tmp_path, count_sampling, method):
    ref = reference(method)
    first = rank_distribution(*SHAPE, P, method, seed=SEED, cache=RankCache(tmp_path))
    assert same(first, ref)
    files = entry_files(tmp_path)
    assert len(files) == 1
    # the stored entry holds the sample counts of the distribution
    entry = json.loads(files[0].read_text())
    counts = np.asarray(entry["payload"]["counts"])
    assert counts.sum() == ref.samples and entry["payload"]["kmin"] == ref.kmin
    assert np.allclose(counts / counts.sum(), ref.probs, rtol=0, atol=0)
    # a new cache (new process, empty memory) answers from disk without sampling
    count_sampling.forbid = True
    again = rank_distribution(*SHAPE, P, method, seed=SEED, cache=RankCache(tmp_path))
    assert same(again, ref) and again.method == method
    # ... in either orientation
    t = rank_distribution(SHAPE[1], SHAPE[0], P, method, seed=SEED, cache=RankCache(tmp_path))
    assert same(t, ref) and (t.rows, t.cols) == (SHAPE[1], SHAPE[0])


def test_keys_separate_method_shape_density_and_seed(tmp_path):
    cache = RankCache(tmp_path)
    rank_distribution(*SHAPE, P, "sampled", seed=SEED, cache=cache)
    rank_distribution(*SHAPE, P, "sampled", seed=SEED + 1, cache=cache)
    rank_distribution(*SHAPE, np.nextafter(P, 1), "sampled", seed=SEED, cache=cache)
    rank_distribution(SHAPE[0], SHAPE[1] + 1, P, "sampled", seed=SEED, cache=cache)
    rank_distribution(5, 6, P, "svd", seed=SEED, cache=cache)
    rank_distribution(5, 6, P, "sampled", seed=SEED, cache=cache)
    assert len(entry_files(tmp_path)) == 6
    # the cheap models never touch the disk
    rank_distribution(*SHAPE, P, "analytic", cache=cache)
    rank_distribution(4, 5, P, "exact", cache=cache)
    assert len(entry_files(tmp_path)) == 6


def test_default_cache_uses_the_environment_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "envcache"))
    monkeypatch.setattr(rank, "_default_cache", None)
    d = rank_distribution(*SHAPE, P, "sampled", seed=SEED)
    assert same(d, reference())
    assert len(entry_files(tmp_path / "envcache")) == 1


# ------------------------------------------------------------------------------ corruption


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _empty(path):
    path.write_bytes(b"")


def _garbage(path):
    path.write_bytes(b"\x00\xff not json at all \x89PNG")


def _count_digit(path):
    # change one digit of the stored counts: still valid JSON, but the checksum no longer matches
    raw = path.read_bytes()
    start = raw.index(b'"counts": [') + len(b'"counts": [')
    i = start + next(i for i, c in enumerate(raw[start:]) if chr(c).isdigit())
    digit = raw[i : i + 1]
    path.write_bytes(raw[:i] + (b"9" if digit != b"9" else b"1") + raw[i + 1 :])


def _high_bit(path):
    # flip the top bit of a byte inside the counts: no longer valid UTF-8
    raw = bytearray(path.read_bytes())
    raw[raw.index(b'"counts": [') + len(b'"counts": [')] ^= 0x80
    path.write_bytes(bytes(raw))


def _low_bit(path):
    # flip the lowest bit of the first count's last digit
    raw = bytearray(path.read_bytes())
    i = raw.index(b"]", raw.index(b'"counts": [')) - 1
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))


def _edit(fn):
    def corrupt(path):
        entry = json.loads(path.read_text())
        fn(entry)
        path.write_text(json.dumps(entry))

    return corrupt


def _rechecksum(fn):
    """Tamper with the payload and recompute the checksum: a well-formed entry with nonsense."""
    from planner.core.cache import _checksum

    def edit(entry):
        fn(entry["payload"])
        entry["checksum"] = _checksum(entry["payload"])

    return _edit(edit)


def _scale_counts(payload):
    payload["counts"] = [3 * c for c in payload["counts"]][::-1]


CORRUPTIONS = {
    "truncated": _truncate,
    "empty": _empty,
    "garbage": _garbage,
    "count digit changed": _count_digit,
    "high bit flipped": _high_bit,
    "low bit flipped": _low_bit,
    "wrong checksum": _edit(lambda e: e.update(checksum="0" * 64)),
    "checksum missing": _edit(lambda e: e.pop("checksum")),
    "counts tampered, old checksum": _edit(lambda e: _scale_counts(e["payload"])),
    "kmin tampered, old checksum": _edit(lambda e: e["payload"].update(kmin=e["payload"]["kmin"] + 1)),
    "other key": _edit(lambda e: e.update(key=e["key"].replace("seed=", "seed=9"))),
    "stale format": _edit(lambda e: e.update(format="rank-cache/0")),
    "not an object": lambda p: p.write_text("[1, 2, 3]"),
    "negative count": _rechecksum(lambda pl: pl["counts"].__setitem__(0, -5)),
    "empty counts": _rechecksum(lambda pl: pl.update(counts=[])),
    "zero counts": _rechecksum(lambda pl: pl.update(counts=[0, 0])),
    "counts not a list": _rechecksum(lambda pl: pl.update(counts="many")),
    "nested counts": _rechecksum(lambda pl: pl.update(counts=[[1, 2], [3, 4]])),
    "kmin missing": _rechecksum(lambda pl: pl.pop("kmin")),
    "kmin negative": _rechecksum(lambda pl: pl.update(kmin=-1)),
    "rank above the short side": _rechecksum(lambda pl: pl.update(kmin=min(SHAPE))),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_entry_is_recomputed_and_rewritten(tmp_path, count_sampling, name, caplog):
    ref = reference()
    rank_distribution(*SHAPE, P, "sampled", seed=SEED, cache=RankCache(tmp_path))
    (path,) = entry_files(tmp_path)
    good_payload = DiskCache(tmp_path).get(key())
    assert good_payload is not None
    before = path.read_bytes()
    CORRUPTIONS[name](path)
    assert path.read_bytes() != before
    calls = count_sampling.calls

    d = rank_distribution(*SHAPE, P, "sampled", seed=SEED, cache=RankCache(tmp_path))
    assert same(d, ref), "a corrupt entry was trusted"
    assert count_sampling.calls == calls + 1, "the corrupt entry was not recomputed"
    # the file has been rewritten valid: a fresh cache reads it back without sampling
    assert entry_files(tmp_path) == [path]
    assert DiskCache(tmp_path).get(key()) == good_payload
    count_sampling.forbid = True
    assert same(rank_distribution(*SHAPE, P, "sampled", seed=SEED, cache=RankCache(tmp_path)), ref)


def test_disk_cache_get_rejects_without_raising(tmp_path):
    cache = DiskCache(tmp_path)
    assert cache.get("nothing here") is None
    cache.put("k", {"a": 1})
    assert cache.get("k") == {"a": 1}
    generic = {
        "truncated": _truncate, "empty": _empty, "garbage": _garbage, "not an object": CORRUPTIONS["not an object"],
        "wrong checksum": CORRUPTIONS["wrong checksum"], "checksum missing": CORRUPTIONS["checksum missing"],
        "stale format": CORRUPTIONS["stale format"], "other key": _edit(lambda e: e.update(key="other")),
        "payload tampered": _edit(lambda e: e["payload"].update(a=2)),
    }
    for name, corrupt in generic.items():
        cache.put("k", {"a": 1})
        corrupt(cache._path("k"))
        assert cache.get("k") is None, name
    # a directory where the file should be is a read error, not a crash
    cache._path("dir").mkdir()
    assert cache.get("dir") is None


def test_unwritable_cache_does_not_break_planning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    d = rank_distribution(*SHAPE, P, "sampled", seed=SEED, cache=RankCache(blocker / "cache"))
    assert same(d, reference())
    assert blocker.read_text().startswith("a file")


# ------------------------------------------------------------------------------ concurrency

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from planner.core.cache import DiskCache
    directory, key, tag, go = sys.argv[1:5]
    cache = DiskCache(directory)
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("start signal never came")
        time.sleep(0.001)
    for i in range(300):
        payload = {"writer": tag, "i": i, "kmin": 0, "counts": list(range(i % 7 + 1))}
        cache.put(key, payload)
        got = cache.get(key)
        if got is None or got["counts"] != list(range(got["i"] % 7 + 1)):
            sys.exit(f"read a broken entry after write {i}: {got!r}")
    """
)


def test_two_processes_writing_one_key_leave_one_valid_entry(tmp_path):
    go = tmp_path / "go"
    directory = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(directory), "the key", tag, str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag in ("A", "B")
    ]
    go.write_text("go")
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    files = list(directory.iterdir())
    assert len(files) == 1, files  # one entry, no temporary files left behind
    payload = DiskCache(directory).get("the key")
    assert payload is not None and payload["writer"] in ("A", "B") and payload["i"] == 299


SAMPLER = textwrap.dedent(
    """
    import os, sys, time
    from planner.core.rank import RankCache, rank_distribution
    directory, go = sys.argv[1:3]
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("start signal never came")
        time.sleep(0.001)
    d = rank_distribution(%d, %d, %r, "sampled", seed=%d, cache=RankCache(directory))
    print(d.kmin, d.samples, list(d.probs))
    """
) % (SHAPE[0], SHAPE[1], P, SEED)


def test_two_processes_sampling_one_key(tmp_path):
    ref = reference()
    go = tmp_path / "go"
    directory = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", SAMPLER, str(directory), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    go.write_text("go")
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split(" ", 2)[:2] == [str(ref.kmin), str(ref.samples)]
    files = list(directory.iterdir())
    assert len(files) == 1, files
    d = rank_distribution(*SHAPE, P, "sampled", seed=SEED, cache=RankCache(directory))
    assert same(d, ref)


# ------------------------------------------------------------------------------ switching it off


@pytest.mark.parametrize("value", ["off", "OFF", " off ", "", "none", "0"])
def test_environment_switches_the_disk_cache_off(tmp_path, monkeypatch, value):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv(ENV_VAR, value)
    monkeypatch.setattr(rank, "_default_cache", None)
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() is None
    assert RankCache().disk is None
    d = rank_distribution(*SHAPE, P, "sampled", seed=SEED)
    assert same(d, reference())
    assert list(home.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_cli_with_cache_off_writes_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), **{ENV_VAR: "off"})
    out = subprocess.run(
        [sys.executable, "-m", "planner", "bound", "--arch", "60,40,30,10", "--density", "0.05", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["log2_bound"] > 0
    assert list(home.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_unset_environment_uses_the_user_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = default_cache_dir()
    assert path is not None and "sparsity-planner" in str(path)
    if sys.platform.startswith("linux"):
        assert path == tmp_path / "xdg" / "sparsity-planner"
    monkeypatch.setenv(ENV_VAR, "~/somewhere")
    assert default_cache_dir() == tmp_path / "somewhere"
