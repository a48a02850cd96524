"""A report's markdown as one self-contained HTML page: figures inline as data URIs.

Converted with the `markdown` package (installed with TensorBoard) and its ``tables``,
``fenced_code`` and ``md_in_html`` extensions; every ``<img src="x.png">`` that names a file
beside the report is replaced by a base64 ``data:`` URI, so the page can be mailed or
attached on its own.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f3f3f3; }
img { max-width: 100%; }
code { background: #f5f5f5; padding: 0 0.2rem; }
pre { background: #f5f5f5; padding: 0.5rem; overflow-x: auto; }
"""


def inline_images(body: str, base: Path) -> str:
    """Replace the src of every image that is a file under `base` by a data URI."""

    def repl(m: re.Match) -> str:
        src = html.unescape(m.group(2))
        path = base / src
        if "://" in src or src.startswith("data:") or not path.is_file():
            return m.group(0)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{m.group(1)}data:{mime};base64,{data}{m.group(3)}'

    return re.sub(r'(<img\b[^>]*?\bsrc=")([^"]+)(")', repl, body)


def markdown_to_html(text: str, base: Path, title: str = "report") -> str:
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "md_in_html"])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"{inline_images(body, base)}\n</body>\n</html>\n")


def write_html(md_path: Path) -> Path:
    """report.md -> report.html beside it, figures inline."""
    text = md_path.read_text()
    first = next((line[2:] for line in text.splitlines() if line.startswith("# ")), md_path.stem)
    out = md_path.with_suffix(".html")
    out.write_text(markdown_to_html(text, md_path.parent, first))
    return out
