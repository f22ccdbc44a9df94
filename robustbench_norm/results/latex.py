"""LaTeX tables for a paper appendix: booktabs rules, best values bold, near-chance values grey.

Each :class:`~robustbench_norm.results.document.Table` of a page becomes one ``table`` float
(``\\toprule``/``\\midrule``/``\\bottomrule``, scaled to the text width), its title and caption lines as
the ``\\caption``, its notes below. The preamble needs ``\\usepackage{booktabs,xcolor,graphicx}`` (said in
the file's first lines). Every text is escaped, so names with ``_``, ``%`` or ``&`` compile.
"""

from __future__ import annotations

import re

from robustbench_norm.results.document import NEAR_CHANCE_MARK, Cell, Document, Table

PREAMBLE = "% needs \\usepackage{booktabs} \\usepackage{xcolor} \\usepackage{graphicx}"
_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "Δ": r"$\Delta$", NEAR_CHANCE_MARK: r"$^\circ$", "σ": r"$\sigma$", "λ": r"$\lambda$",
            "<": r"\textless{}", ">": r"\textgreater{}", "≈": r"$\approx$"}
_SPECIAL_RE = re.compile("|".join(re.escape(key) for key in _SPECIAL))


def escape_latex(text: str) -> str:
    """``text`` with LaTeX's special characters (and the few Unicode signs the tables use) escaped."""
    return _SPECIAL_RE.sub(lambda match: _SPECIAL[match.group(0)], text)


def cell_latex(cell: Cell) -> str:
    """A cell: escaped, ``\\textbf`` when best, ``\\textcolor{gray}`` when near chance."""
    text = escape_latex(cell.shown)
    if cell.bold:
        text = f"\\textbf{{{text}}}"
    if cell.near_chance:
        text = f"\\textcolor{{gray}}{{{text}}}"
    return text


def table_latex(table: Table, label: str) -> str:
    """One ``table`` float with booktabs rules (numbers right-aligned) and ``\\label{label}``."""
    columns = "".join("r" if numeric else "l" for numeric in table.numeric_columns())
    caption = " ".join([escape_latex(table.title) + ".", *map(escape_latex, table.caption)])
    lines = ["\\begin{table}[htbp]", "\\centering", "\\scriptsize",
             f"\\caption{{{caption}}}", f"\\label{{{label}}}",
             "\\resizebox{\\textwidth}{!}{%", f"\\begin{{tabular}}{{{columns}}}", "\\toprule",
             " & ".join(escape_latex(name) for name in table.header) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell_latex(cell) for cell in row) + " \\\\" for row in table.rows]
    lines += ["\\bottomrule", "\\end{tabular}}"]
    if table.notes:
        lines += ["\\par\\smallskip", "\\parbox{\\textwidth}{\\scriptsize "
                  + " ".join(escape_latex(note) for note in table.notes) + "}"]
    lines.append("\\end{table}")
    return "\n".join(lines)


def document_latex(document: Document, label_prefix: str) -> str:
    """Every table of the page, in order, labelled ``<label_prefix>:<n>``."""
    parts = [PREAMBLE, f"% {escape_latex(document.title)}"]
    parts += [table_latex(table, f"{label_prefix}:{index}") for index, table in enumerate(document.tables(), 1)]
    return "\n\n".join(parts) + "\n"
