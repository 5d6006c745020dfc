"""Test fixtures: every test gets its own rank cache directory, never the user's."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    import planner.core.rank as rank

    monkeypatch.setenv("SPARSITY_PLANNER_CACHE_DIR", str(tmp_path_factory.mktemp("rank-cache")))
    monkeypatch.setattr(rank, "_default_cache", None)
    yield


@pytest.fixture
def cli(capsys):
    """The command line run in this process: ``cli("plan", "--arch", ...)`` gives (exit code,
    stdout, stderr) of that one call."""
    from planner.cli import main

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
