"""The console script's entry point: a Ctrl-C while the command line is still importing ends
with "interrupted" and exit code 130, like one during the work, not with a traceback."""

import sys


def main() -> int:
    try:
        from planner.cli import interrupted, main as cli_main
    except KeyboardInterrupt:
        print("sparsity-planner: interrupted", file=sys.stderr)
        return 130
    try:
        return cli_main()
    except KeyboardInterrupt:  # between the handlers, e.g. while one prints
        return interrupted()
