"""A page independent of its output format: headings, text, tables of formatted cells, figures, links.

:mod:`robustbench_norm.results.html`, :mod:`robustbench_norm.results.markdown` and
:mod:`robustbench_norm.results.latex` render it. A :class:`Cell` carries its text, a value to sort by
(HTML tables sort by it when a header is clicked), its emphasis (``bold``: the best value of its column;
``near_chance``: within 5 points of chance, greyed and marked with :data:`NEAR_CHANCE_MARK`), a ``title``
(a longer explanation: the HTML tooltip) and optionally a link. Rows listed in
:attr:`Table.reference_rows` are the reference (BatchNorm with running statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

NEAR_CHANCE_MARK = "°"
REFERENCE_MARK = "(ref)"


@dataclass(frozen=True)
class Cell:
    """One formatted value; ``sort`` is a number (NaN sorts last) or text."""

    text: str
    sort: float | str = math.nan
    bold: bool = False
    near_chance: bool = False
    title: str = ""
    href: str = ""

    @property
    def shown(self) -> str:
        """The text with the near-chance mark appended (the form every renderer prints)."""
        return f"{self.text} {NEAR_CHANCE_MARK}" if self.near_chance else self.text


def text_cell(text: str, href: str = "") -> Cell:
    """A cell of text that sorts by its text."""
    return Cell(text, sort=text, href=href)


@dataclass(frozen=True)
class Table:
    """A titled table: caption lines before it, notes after it, and the reference rows' indices."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    reference_rows: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for index, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"table {self.title!r}: row {index} has {len(row)} cells for "
                                 f"{len(self.header)} columns")

    def numeric_columns(self) -> list[bool]:
        """Per column: whether every cell sorts by a number (right-aligned)."""
        return [bool(self.rows) and all(not isinstance(row[i].sort, str) for row in self.rows)
                for i in range(len(self.header))]


@dataclass(frozen=True)
class Heading:
    """A section heading (level 1 = page title); ``anchor`` is its HTML id."""

    text: str
    level: int
    anchor: str = ""


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Figure:
    """An image file beside the page, with its pixel size and a caption."""

    src: str
    alt: str
    caption: str
    width: int
    height: int


@dataclass(frozen=True)
class Links:
    """A list of (text, href) links, each with an optional description after it."""

    items: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Details:
    """Blocks folded away (HTML ``<details>``), e.g. the long table of every measurement."""

    summary: str
    blocks: tuple[Block, ...]


Block = Union[Heading, Paragraph, Table, Figure, Links, Details]


@dataclass(frozen=True)
class Document:
    """A page: its title and its blocks in order."""

    title: str
    blocks: tuple[Block, ...]

    def tables(self) -> list[Table]:
        """Every table, also those inside :class:`Details`, in order."""
        return list(_tables(self.blocks))


def _tables(blocks: tuple[Block, ...]):
    for block in blocks:
        if isinstance(block, Table):
            yield block
        elif isinstance(block, Details):
            yield from _tables(block.blocks)
