"""The HTML pieces of the run report: escaping, notes, tables, numbers in their units, embedded images.

The page must render offline and load nothing: images are embedded as data URIs, the style is inline, and
the page's Content-Security-Policy (CSP) forbids everything else.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime
from pathlib import Path

from PIL import Image

BROWSER_IMAGES = {"PNG", "JPEG", "GIF", "WEBP"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; line-height: 1.5;
       color: #1d1d1f; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.8rem 0; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f0f0f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.8rem 0; }
pre { background: #f6f6f8; padding: 0.8rem; overflow-x: auto; }
.note { color: #8a4b00; background: #fff6e5; border-left: 4px solid #e0a040; padding: 0.3rem 0.7rem; }
.meta td:first-child { color: #555; }
"""
# default-src 'none': the page may load nothing at all; images only from data: URIs, style only inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def cell(value: object) -> str:
    """A table cell as text: floats to four significant digits (thousands grouped), null as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value)


def quantity(key: str, value: object) -> str:
    """A metric by its key's unit: errors and accuracies in %, rates per second, durations in s and min."""
    if isinstance(value, float):
        if key.endswith(("_error", "_accuracy")):
            return f"{100 * value:.2f} %"
        if key.endswith("_per_s"):
            return f"{value:,.1f} /s"
        if key.endswith("_s"):
            return f"{value:,.1f} s ({value / 60:.1f} min)" if value >= 60 else f"{value:.1f} s"
    return cell(value)


NUMBER_CELL = ' class="num"'  # numbers align right


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(columns: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    lines = []
    for row in rows:
        cells = "".join(f"<td{NUMBER_CELL if is_number(v) else ''}>{escape(cell(v))}</td>" for v in row)
        lines.append(f"<tr>{cells}</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(lines) + "\n</table>"


def records_table(record: dict) -> str:
    """One row per key, the value in its unit."""
    rows = "".join(
        f"<tr><th>{escape(key.replace('_', ' '))}</th><td>{escape(quantity(key, value))}</td></tr>"
        for key, value in record.items()
    )
    return f"<table>{rows}</table>"


def image(path: Path) -> str:
    """The image as an <img> with a data URI, or a note saying why it is not there."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            kind = im.format
            im.verify()
    except FileNotFoundError:
        return note(f"{path.name} is missing.")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # damaged, unknown or a bomb
        return note(f"{path.name} is not a readable image: {e}")
    if kind not in BROWSER_IMAGES:
        return note(f"{path.name} is a {kind} image, which browsers do not show; save it as PNG.")
    uri = f"data:{Image.MIME[kind]};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img src="{uri}" alt="{escape(path.name)}">'


def paragraphs(text: str) -> str:
    return "\n".join(f"<p>{escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())
