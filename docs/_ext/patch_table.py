"""Sphinx directives that render the patch table from ``sb3_tensorpatch.table.ROWS`` at build time.

- ``patch-table``: one table row per row of ``ROWS``, in table order: package, versions, target,
  route, options, expected parameters.
- ``supported-versions``: a list with the supported releases per package.
- ``tested-releases``: one table row per release of ``RELEASES``, the version matrix.

The page can therefore never drift from the code. After an HTML build, the rendered page is read
back and its rows are compared with ``ROWS``; any difference fails the build.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

from sb3_tensorpatch import table

HEADERS = ("package", "versions", "target", "route", "options", "expected parameters")
CLASS = "patch-table"


def cells(row: table.Row) -> tuple[str, ...]:
    """The text of each cell for ``row``, as it appears on the page."""
    options = ", ".join(f"{key}={value!r}" for key, value in row.options.items()) or "-"
    return (row.package, row.versions, row.target, row.route, options, ", ".join(row.params))


ZWSP = "\u200b"  # a line-break opportunity, after each dot and colon of a dotted name


def _breakable(text: str) -> str:
    return text.replace(".", "." + ZWSP).replace(":", ":" + ZWSP)


def _entry(text: str, literal: bool) -> nodes.entry:
    entry = nodes.entry()
    paragraph = nodes.paragraph()
    shown = _breakable(text) if literal and ":" in text else text
    paragraph += nodes.literal(shown, shown) if literal and text != "-" else nodes.Text(text)
    entry += paragraph
    return entry


def _row(texts: tuple[str, ...], literal: tuple[bool, ...]) -> nodes.row:
    row = nodes.row()
    for text, is_literal in zip(texts, literal):
        row += _entry(text, is_literal)
    return row


def _table(
    headers: tuple[str, ...],
    widths: tuple[int, ...],
    rows: list[tuple[str, ...]],
    literal: tuple[bool, ...],
    classes: list[str] | None = None,
) -> nodes.table:
    """A table node: a header row, then one row per item of ``rows`` (``literal`` says which columns are code)."""
    group = nodes.tgroup(cols=len(headers))
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head += _row(headers, (False,) * len(headers))
    group += head
    body = nodes.tbody()
    for texts in rows:
        body += _row(texts, literal)
    group += body
    result = nodes.table(classes=classes or [])
    result += group
    return result


class PatchTable(SphinxDirective):
    """Render ``sb3_tensorpatch.table.ROWS``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        literal = (False, True, True, True, True, True)
        rows = [cells(row) for row in table.ROWS]
        return [_table(HEADERS, (8, 10, 30, 10, 14, 18), rows, literal, classes=[CLASS])]


class SupportedVersions(SphinxDirective):
    """List the supported range of each package in the table."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        items = nodes.bullet_list()
        for package in dict.fromkeys(row.package for row in table.ROWS):
            targets = len({row.target for row in table.ROWS if row.package == package})
            text = f"{package} {table.supported_range(package)}: {targets} patch targets"
            item = nodes.list_item()
            item += nodes.paragraph(text, text)
            items += item
        return [items]


class TestedReleases(SphinxDirective):
    """Render ``sb3_tensorpatch.table.RELEASES``: the releases the version matrix tests."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        headers = ("stable-baselines3", "sb3-contrib", "test environment", "expected")
        rows = []
        for release in table.RELEASES:
            environment = ", ".join(release.pins)
            if release.pre:
                environment += "; first " + ", then ".join(f"pip install {' '.join(step)}" for step in release.pre)
            expected = "patched" if release.supported else "refused"
            rows.append((release.sb3, release.contrib, environment, expected))
        return [_table(headers, (10, 10, 30, 10), rows, (True, True, True, False))]


class _TableReader(HTMLParser):
    """Collects the text of each body row of the tables with class ``patch-table``."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # > 0 while inside a patch table
        self.in_body = False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table" and (self.depth or CLASS in classes):
            self.depth += 1
        elif self.depth == 1 and tag == "tbody":
            self.in_body = True
        elif self.depth == 1 and self.in_body and tag == "tr":
            self.rows.append([])
        elif self.depth == 1 and self.in_body and tag == "td":
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "tbody":
            self.in_body = False
        elif tag == "td" and self.cell is not None:
            text = "".join(self.cell).replace(ZWSP, "")
            self.rows[-1].append(re.sub(r"\s+", " ", text).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def check_rendered(app: Sphinx, exception: Exception | None) -> None:
    """Fail the build unless the rendered versions page lists exactly the rows of ``ROWS``."""
    if exception is not None or app.builder.format != "html":
        return
    docname = app.config.patch_table_page
    page = Path(app.builder.get_outfilename(docname))
    if not page.exists():
        raise ExtensionError(f"patch-table check: {page} was not written")
    reader = _TableReader()
    reader.feed(page.read_text(encoding="utf-8"))
    rendered = [tuple(row) for row in reader.rows]
    expected = [cells(row) for row in table.ROWS]
    if rendered != expected:
        missing = [row for row in expected if row not in rendered]
        extra = [row for row in rendered if row not in expected]
        raise ExtensionError(
            f"patch-table check: {docname} lists {len(rendered)} rows, the table has {len(expected)}; "
            f"missing {missing}, unexpected {extra}"
        )


def always_reread(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    """Re-read the versions page on every build: the table may change without the page changing."""
    docname = app.config.patch_table_page
    return [docname] if docname in env.found_docs else []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("patch_table_page", "versions", "html")
    app.add_directive("patch-table", PatchTable)
    app.add_directive("supported-versions", SupportedVersions)
    app.add_directive("tested-releases", TestedReleases)
    app.connect("env-get-outdated", always_reread)
    app.connect("build-finished", check_rendered)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
