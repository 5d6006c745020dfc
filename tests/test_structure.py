"""The package's shape: a cheap ``import planner``, a lazily loaded CLI, a public API that resolves.

Not timings: these check which modules get imported, which is what the start-up time follows.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import planner
from planner.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str, modules) -> list[str]:
    probe = f"import sys\n{code}\nprint('loaded:', *(m for m in {tuple(modules)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("loaded:"), out.stdout
    return last.split()[1:]


def test_import_planner_loads_no_heavy_library():
    assert loaded_after("import planner", ("scipy.special", "ortools", "pulp", "torch")) == []


def test_help_loads_no_numerical_library():
    # --help imports every command module to list it: none may import numpy or scipy at module level
    code = "from planner.cli import main\nmain(['--help'])"
    assert loaded_after(code, ("numpy", "scipy", "ortools", "pulp", "torch")) == []


def test_the_bound_needs_no_scipy():
    code = "import planner\nplanner.expected_bound('784,300,100,10', 0.05, rank_model='analytic', " \
           "cache=planner.RankCache(disk=False))"
    # the analytic rank model itself uses scipy.special; the bound on top of it must not add scipy.optimize,
    # OR-Tools, PuLP or torch
    assert loaded_after(code, ("scipy.optimize", "ortools", "pulp", "torch")) == []


@pytest.mark.parametrize("name", planner.__all__)
def test_public_name_resolves_to_its_defining_module(name):
    value = getattr(planner, name)
    module = importlib.import_module(planner._EXPORTS[name])
    assert getattr(module, name) is value


def test_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        planner.nope  # noqa: B018


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_registered_command_loads_under_its_name(name):
    command = cli.get_command(None, name)
    assert command is not None and command.name == name


def test_cli_lists_exactly_the_registered_commands():
    assert set(cli.list_commands(None)) == set(COMMANDS)


def test_choice_lists_match_the_modules_that_use_them():
    # the command line's choices come from light package modules; the heavy modules re-export them
    from planner.allocation import baselines, request
    from planner.core import RANK_MODELS, rank

    assert rank.RANK_MODELS is RANK_MODELS
    assert request.TIE_BREAKS is importlib.import_module("planner.allocation").TIE_BREAKS
    assert set(baselines.BASELINES) < set(baselines.STRATEGIES)
