"""The documentation stays true to the code: every option is documented, every link resolves."""

import re
from pathlib import Path

import click
import pytest

from planner.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md"])
CLI_DOC = ROOT / "docs" / "cli.md"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_in_the_cli_reference(name):
    text = CLI_DOC.read_text(encoding="utf-8")
    assert f"sparsity-planner {name}" in text
    command = cli.get_command(None, name)
    missing = [p.opts for p in command.params if isinstance(p, click.Option)
               and not any(re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text) for opt in p.opts)]
    assert not missing, f"{name}: {missing} not in docs/cli.md"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path = target.split("#", 1)[0]
        if not path:
            continue
        resolved = (doc.parent / path).resolve()
        assert resolved.exists(), f"{doc.name}: link {target} does not resolve"
        assert ROOT in resolved.parents or resolved == ROOT, f"{doc.name}: link {target} leaves the repository"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointer_outside_the_repository(doc):
    assert "../shared" not in doc.read_text(encoding="utf-8")


def test_anchors_into_docs_exist():
    """``file.md#anchor`` links name a heading of that file (GitHub's slug rules, simplified)."""
    def slugs(path):
        out = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                title = line.lstrip("#").strip().lower()
                out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
        return out

    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, anchor = target.split("#", 1)
            file = (doc.parent / path).resolve() if path else doc
            if file.suffix == ".md" and file.exists():
                assert anchor in slugs(file), f"{doc.name}: anchor #{anchor} not in {file.name}"
