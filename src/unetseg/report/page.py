"""The blocks of a self-contained HTML report: escaped text, tables that sort when a column
header is clicked, pictures embedded as base64 PNG, a class legend, and the page around them.

Nothing in a page refers to another file or address, so a report can be mailed, archived or
opened offline as the one file it is.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.pictures td { text-align: center; vertical-align: top; font-size: 12px; }
table.sortable th { cursor: pointer; user-select: none; background: #f4f4f4; }
table.sortable th[data-order=asc]::after { content: " \\25B2"; }
table.sortable th[data-order=desc]::after { content: " \\25BC"; }
.scroll { max-height: 480px; overflow: auto; display: inline-block; }
img { max-width: 100%; } figure { margin: 12px 0; } figcaption { font-size: 13px; color: #555; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            border: 1px solid #555; vertical-align: middle; }
.note { color: #555; font-size: 13px; }
pre { background: #f7f7f7; padding: 8px; overflow: auto; font-size: 12px; }
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.dataset.order !== "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = asc ? "asc" : "desc";
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (row) { return row.cells[col].dataset.v; };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }  // blanks last
        var d = (th.dataset.type === "number") ? Number(x) - Number(y) : x.localeCompare(y);
        return asc ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def text(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    """A cell's text: floats to ``digits`` significant digits, None and NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return text(value)


def _sort_key(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return text(repr(value) if isinstance(value, float) else value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, sortable: bool = False,
          table_id: str | None = None, digits: int = 4) -> str:
    """An HTML table. With ``sortable`` a click on a header sorts by that column (numbers as
    numbers, blanks last; again to reverse): each cell carries its raw value as ``data-v``,
    and a column whose values are all numbers or blank sorts numerically."""
    numeric = [all(r[i] is None or isinstance(r[i], int | float) and not isinstance(r[i], bool)
                   for r in rows) for i in range(len(columns))]
    head = "".join(f'<th{" class=num data-type=number" if n else ""}>{text(c)}</th>'
                   for c, n in zip(columns, numeric))
    body = "".join("<tr>" + "".join(
        f'<td{" class=num" if n else ""} data-v="{_sort_key(v)}">{number(v, digits)}</td>'
        for v, n in zip(row, numeric)) + "</tr>\n" for row in rows)
    attributes = (' class="sortable"' if sortable else "") + (
        f' id="{text(table_id)}"' if table_id else "")
    return f"<table{attributes}><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def per_image_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sortable, scrolling table row per image; the columns are the first row's keys."""
    if not rows:
        return "<p>no images</p>"
    columns = list(rows[0])
    cells = [[r.get(c) for c in columns] for r in rows]
    return ('<p class="note">Click a column header to sort by it; click again to reverse.</p>'
            f'<div class="scroll">{table(columns, cells, sortable=True, table_id="per-image")}'
            "</div>")


def rgb_png(rgb: np.ndarray, max_side: int = 480, min_side: int = 160) -> bytes:
    """An (H, W, 3) uint8 picture as PNG bytes, shrunk (box filter) so that its longer side is
    at most ``max_side`` pixels, to keep the page small, or enlarged by a whole factor (each
    pixel a square) so that it is at least ``min_side``, to be seen."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(rgb))
    factor = min_side // max(picture.size)
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor),
                                 Image.Resampling.NEAREST)
    scale = max_side / max(picture.size)
    if scale < 1:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BOX)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image(png: bytes, alt: str, *, width: int | None = None) -> str:
    """An ``<img>`` holding ``png`` as a base64 ``data:`` URI."""
    data = base64.b64encode(png).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{text(alt)}"{size}>'


def legend(names: Sequence[str], colours: np.ndarray) -> str:
    """Class names beside swatches of their (K, 3) uint8 colours."""
    items = "".join(f'<span><i style="background: rgb({r},{g},{b})"></i>{text(n)}</span>'
                    for n, (r, g, b) in zip(names, np.asarray(colours).tolist()))
    return f'<p class="legend">{items}</p>'


def picture_row(pictures: Sequence[tuple[str, np.ndarray]], max_side: int = 320) -> str:
    """Pictures (caption, (H, W, 3) uint8) side by side, each with its caption, each at most
    ``max_side`` pixels and small enough that the row fits the page's 1168-pixel width."""
    side = min(max_side, 1168 // max(1, len(pictures)) - 20)
    cells = "".join(f"<td>{image(rgb_png(rgb, side, side // 2), caption)}<br>"
                    f"{text(caption)}</td>"
                    for caption, rgb in pictures)
    return f'<table class="pictures"><tr>{cells}</tr></table>'


def page(title: str, sections: Sequence[tuple[str, str]], *, intro: str = "") -> str:
    """The whole document: ``title``, ``intro`` (HTML) and one ``<h2>`` section per
    (heading, HTML) pair, with the style and the sorting script inline."""
    parts = [f"<h2>{text(heading)}</h2>\n{content}" for heading, content in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{text(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{text(title)}</h1>\n{intro}\n" + "\n".join(parts)
            + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")
