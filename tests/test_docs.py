"""The docs say what is true now: the CLI page is the real `--help`, and every relative link leads to a file."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
from cogapp import Cog

ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE = ROOT / "docs" / "cli.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCED = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)  # code blocks: their brackets are code, not links
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)  # [label]: target
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)  # https:, mailto:, //host, #anchor on the same page


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown page, without their #anchors, outside code."""
    prose = INLINE_CODE.sub("", FENCED.sub("", text))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [target.split("#", 1)[0] for target in targets if not EXTERNAL.match(target)]


def test_relative_links_are_found_and_external_ones_skipped() -> None:
    text = (
        "See [the CLI](docs/cli.md#reply), [a title](quality.md \"Quality\") and [ray](https://docs.ray.io).\n"
        "[top](#install) `[not a link](nowhere.md)`\n\n```python\nx = [a](b)\n```\n[ref]: ../benchmarks/README.md\n"
    )
    assert relative_links(text) == ["docs/cli.md", "quality.md", "../benchmarks/README.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_that_exists(page: Path) -> None:
    missing = [target for target in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_cli_reference_is_the_real_help(tmp_path: Path) -> None:
    regenerated = tmp_path / "cli.md"
    status = Cog().main(["cog", "-o", str(regenerated), str(CLI_PAGE)])
    assert status == 0, "cog could not run docs/cli.md's code (its output above says why)"
    page, fresh = CLI_PAGE.read_text(encoding="utf-8"), regenerated.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(page.splitlines(True), fresh.splitlines(True), "docs/cli.md", "the real --help", n=1))
    assert not diff, "docs/cli.md is stale: run `cog -r docs/cli.md` and commit it\n" + diff
