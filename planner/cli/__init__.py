"""The ``sparsity-planner`` command line: thin commands that parse, call the library, print.

One module per command (``bound``, ``plan``, ``apply``, ``export``, ``compare``,
``count_regions``), registered in :data:`COMMANDS` and imported only when listed or run;
``common`` holds what they share. :func:`main` turns every library error into one line on
stderr and exit code 2.
"""

from __future__ import annotations

import importlib
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
    """Run the CLI; bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        return 2
    except PlannerError as exc:
        click.echo(f"{PROG}: error: {exc}", err=True)
        return 2
    except BrokenPipeError:
        return 0
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
