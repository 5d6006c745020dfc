"""The ``sparsity-planner`` command line: thin commands that parse, call the library, print.

One module per command (``bound``, ``plan``, ``apply``, ``export``, ``compare``,
``count_regions``, ``sensitivity``), registered in :data:`COMMANDS` and imported only when listed or run;
``common`` holds what they share. :func:`main` turns every library error into one line on
stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from planner.errors import PlannerError

PROG = "sparsity-planner"

#: command name -> "module:attribute" of its click command
COMMANDS = {
    "apply": "planner.cli.apply:apply_command",
    "bound": "planner.cli.bound:bound_command",
    "compare": "planner.cli.compare:compare_command",
    "count-regions": "planner.cli.count_regions:count_regions_command",
    "export": "planner.cli.export:export_command",
    "plan": "planner.cli.plan:plan_command",
    "sensitivity": "planner.cli.sensitivity:sensitivity_command",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, so start-up pays only for the one run."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy:
            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparsity-planner", prog_name=PROG)
def cli() -> None:
    """Plan per-layer sparsity of ReLU networks by the expected number of linear regions."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Every expected failure is one line on stderr and exit code 2, never a
    traceback: bad options, library errors, unwritable or unreadable files, a full disk, memory.
    Ctrl-C is "interrupted" and exit code 130; no partial output file is left either way."""
    try:
        rv = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
        sys.stdout.flush()  # a full or closed stdout fails here, inside the handlers
    except (click.exceptions.Abort, KeyboardInterrupt):
        return interrupted()
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        return fail(exc.format_message())
    except PlannerError as exc:
        return fail(str(exc))
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as exc:
        from planner.fileio import describe_os_error

        return fail(describe_os_error(exc))
    except MemoryError:
        return fail("out of memory: give smaller layers, a coarser --grid or fewer samples")
    except RecursionError:
        return fail("input nested too deeply")
    return rv if isinstance(rv, int) else 0


def fail(message: str) -> int:
    try:
        click.echo(f"{PROG}: error: {message}", err=True)
    except OSError:
        pass
    _silence_stdout()
    return 2


def interrupted() -> int:
    try:
        click.echo(f"{PROG}: interrupted", err=True)
    except OSError:
        pass
    _silence_stdout()
    return 130


def _silence_stdout() -> None:
    """After a failed write to stdout, point it at devnull so the interpreter's final flush does
    not print a second error."""
    try:
        sys.stdout.flush()
    except OSError:
        try:
            devnull = open(os.devnull, "w")
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(main())
