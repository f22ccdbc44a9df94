"""Self-contained HTML pages: inline CSS, one small inline script, no external resource, readable without it.

Tables are sortable: a click on (or Enter on a focused) header sorts the rows by that column's
``data-sort`` values: numbers numerically before texts, texts by their lowercase code points, missing values
(``nan`` or empty) last in either direction; a second click reverses the order (Array.prototype.sort is
stable, so ties keep the published order). Without JavaScript the tables stay in their published order
(ranked). Best values are bold, values within 5 points of chance grey and marked (°), the reference row
tinted. Everything printed comes from :func:`html.escape`, so names and reasons show as text.
"""

from __future__ import annotations

import html
import math
import re

from robustbench_norm.results.document import Block, Cell, Details, Document, Figure, Heading, Links, Paragraph, Table

CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em 2em;color:#1a1a1a;
line-height:1.4;max-width:100em}
h1{font-size:1.6em}h2{font-size:1.3em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1.1em}
p{max-width:60em}.caption,.notes{font-size:13px;color:#333}.notes{color:#555}
.scroll{overflow-x:auto;margin:0.4em 0 0.8em}
table{border-collapse:collapse;font-size:13px}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f2f2f2;text-align:left;white-space:normal;min-width:4em;max-width:14em}
td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:12em;max-width:30em}
tr:nth-child(even) td{background:#fafafa}tr.ref td{background:#e8f0fe}
td.best{font-weight:700}td.chance{color:#9a9a9a}
th[aria-sort]{cursor:pointer}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
figure{margin:0.6em 0 1.2em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#333;max-width:60em}
details{margin:1em 0}summary{cursor:pointer;font-weight:600}
nav a{margin-right:1em}"""

SORT_SCRIPT = """(function(){
function key(cell){var v=cell.getAttribute('data-sort');if(v===null){v=cell.textContent;}
if(v==='nan'||v.trim()===''){return {missing:true};}
return /^\\s*[-+]?(\\d|\\.\\d)/.test(v)?{num:parseFloat(v)}:{text:v.toLowerCase()};}
function compare(a,b,up){if(a.missing||b.missing){return a.missing===b.missing?0:(a.missing?1:-1);}
var r;if(a.num!==undefined&&b.num!==undefined){r=a.num-b.num;}else if(a.num!==undefined){r=-1;}
else if(b.num!==undefined){r=1;}else{r=a.text<b.text?-1:(a.text>b.text?1:0);}return up?r:-r;}
function sortBy(table,column,th){var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
var up=th.getAttribute('aria-sort')!=='ascending';
Array.prototype.forEach.call(th.parentNode.cells,function(c){c.setAttribute('aria-sort','none');});
th.setAttribute('aria-sort',up?'ascending':'descending');
rows.sort(function(a,b){return compare(key(a.cells[column]),key(b.cells[column]),up);});
rows.forEach(function(r){body.appendChild(r);});}
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(table){
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,column){th.tabIndex=0;
th.setAttribute('aria-sort','none');th.title='click to sort';
th.addEventListener('click',function(){sortBy(table,column,th);});
th.addEventListener('keydown',function(e){if(e.key==='Enter'){sortBy(table,column,th);}});});});
document.documentElement.className+=' sortable-ready';})();"""


def anchor(text: str) -> str:
    """An HTML id from text: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def cell_html(cell: Cell, numeric: bool) -> str:
    """One ``<td>`` with its sort value, emphasis classes, tooltip and link."""
    classes = [name for name, on in (("num", numeric), ("best", cell.bold), ("chance", cell.near_chance),
                                     ("wrap", not numeric and len(cell.text) > 60)) if on]
    sort = cell.sort if isinstance(cell.sort, str) else ("nan" if not math.isfinite(cell.sort) else repr(cell.sort))
    attributes = f' data-sort="{html.escape(sort)}"'
    if classes:
        attributes += f' class="{" ".join(classes)}"'
    if cell.title:
        attributes += f' title="{html.escape(cell.title)}"'
    text = html.escape(cell.shown)
    if cell.href:
        text = f'<a href="{html.escape(cell.href)}">{text}</a>'
    return f"<td{attributes}>{text}</td>"


def table_html(table: Table) -> str:
    """Caption lines, a sortable table (reference rows tinted), notes."""
    numeric = table.numeric_columns()
    head = "".join(f'<th scope="col">{html.escape(name)}</th>' for name in table.header)
    body = []
    for index, row in enumerate(table.rows):
        cells = "".join(cell_html(cell, numeric[i]) for i, cell in enumerate(row))
        body.append(f'<tr class="ref">{cells}</tr>' if index in table.reference_rows else f"<tr>{cells}</tr>")
    parts = [f'<div class="caption">{"".join(f"<p>{html.escape(line)}</p>" for line in table.caption)}</div>',
             f'<div class="scroll"><table class="sortable"><caption>{html.escape(table.title)}</caption>'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"]
    if table.notes:
        parts.append(f'<div class="notes">{"".join(f"<p>{html.escape(note)}</p>" for note in table.notes)}</div>')
    return "\n".join(parts)


def document_html(document: Document) -> str:
    """A complete HTML document: inline CSS, the blocks, the sort script at the end."""
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{html.escape(document.title)}</title>", f"<style>{CSS}</style>", "</head>",
                      "<body>", f"<h1>{html.escape(document.title)}</h1>", *_blocks(document.blocks),
                      f"<script>{SORT_SCRIPT}</script>", "</body>", "</html>", ""])


def _blocks(blocks: tuple[Block, ...]) -> list[str]:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 2), 6)
            out.append(f'<h{level} id="{block.anchor or anchor(block.text)}">{html.escape(block.text)}</h{level}>')
        elif isinstance(block, Paragraph):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            out.append(table_html(block))
        elif isinstance(block, Figure):
            src = html.escape(block.src)
            out.append(f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(block.alt)}" '
                       f'width="{block.width}" height="{block.height}"></a>'
                       f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        elif isinstance(block, Links):
            items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a>'
                            + (f" {html.escape(about)}" if about else "") + "</li>"
                            for text, href, about in block.items)
            out.append(f"<ul>{items}</ul>")
        elif isinstance(block, Details):
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>")
            out += _blocks(block.blocks)
            out.append("</details>")
    return out
