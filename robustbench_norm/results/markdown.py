"""GitHub-flavoured markdown that shows text as text: escaping and tables.

GitHub renders raw HTML inside markdown and reads ``|`` as a cell border, backticks as code, brackets as
links and ``*`` / ``_`` as emphasis. :func:`escape_markdown` makes any string (a norm name, JSON kwargs,
a failure reason) display literally:

* a ``<`` that could open a tag or an autolink (followed by a letter, ``/``, ``!`` or ``?``) becomes
  ``&lt;``, and an ``&`` that could start an entity becomes ``&amp;``; CommonMark reads any other ``<``
  (``batch 2 < 4``) and ``&`` as text, so they stay;
* backslash, backtick, brackets and ``|`` get a backslash;
* ``*`` and ``_`` get one where they could open or close emphasis, i.e. next to a non-space; an underscore
  inside a word (``running_stats``) never does and is left alone.

Link targets are written as ``<href>`` (CommonMark's form that allows any character but ``<``, ``>`` and
newlines), so file names with spaces or parentheses still link.
"""

from __future__ import annotations

import re
from typing import Sequence

from robustbench_norm.results.document import (
    Block,
    Cell,
    Details,
    Document,
    Figure,
    Heading,
    Links,
    Paragraph,
    Table,
)

_ENTITY_START = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_BACKSLASHED = re.compile(r"([\\`\[\]|])")
_STAR = re.compile(r"(?<=\S)\*|\*(?=\S)")
_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def escape_markdown(text: object) -> str:
    """``text`` as markdown that GitHub displays literally (one line: newlines become spaces)."""
    text = str(text).replace("\r", " ").replace("\n", " ")
    text = _TAG_START.sub("&lt;", _ENTITY_START.sub("&amp;", text))
    text = _BACKSLASHED.sub(r"\\\1", text)
    text = _STAR.sub(r"\\*", text)
    return _UNDERSCORE.sub(r"\\_", text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub table of cells that are already markdown (escape data with :func:`escape_markdown`)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def cell_markdown(cell: Cell) -> str:
    """A cell as markdown: escaped text, bold when best, a link when it has one."""
    text = escape_markdown(cell.shown)
    if cell.bold and text:
        text = f"**{text}**"
    if cell.href:
        text = f"[{text}](<{cell.href}>)"
    return text


def table_markdown(table: Table) -> str:
    """Title (bold), caption lines, the table, notes; every text escaped."""
    body = markdown_table([escape_markdown(name) for name in table.header],
                          [[cell_markdown(cell) for cell in row] for row in table.rows])
    blocks = [f"**{escape_markdown(table.title)}**", *map(escape_markdown, table.caption), body,
              *map(escape_markdown, table.notes)]
    return "\n\n".join(blocks)


def document_markdown(document: Document) -> str:
    """The page as GitHub markdown; images and links relative to the page's folder."""
    return "\n\n".join([f"# {escape_markdown(document.title)}", *_blocks(document.blocks)]) + "\n"


def _blocks(blocks: Sequence[Block]) -> list[str]:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {escape_markdown(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(escape_markdown(block.text))
        elif isinstance(block, Table):
            out.append(table_markdown(block))
        elif isinstance(block, Figure):
            out.append(f"![{escape_markdown(block.alt)}](<{block.src}>)\n\n{escape_markdown(block.caption)}")
        elif isinstance(block, Links):
            out.append("\n".join(f"- [{escape_markdown(text)}](<{href}>)"
                                 + (f" {escape_markdown(about)}" if about else "")
                                 for text, href, about in block.items))
        elif isinstance(block, Details):
            out.append(f"### {escape_markdown(block.summary)}")
            out += _blocks(block.blocks)
    return out
