"""One small document model, rendered to Markdown and to standalone HTML.

REPORT.md and COMPARE.md are built as a `Document` — a title, some blocks, then sections of
blocks — and rendered twice: `to_markdown()` links images by relative path, `to_html(base_dir)`
embeds them as base64 data URIs so the page renders on its own (e.g. in the MLflow artifact viewer).
No Markdown library is involved; the only inline markup is `code` spans and **bold**.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: str            # relative to the document's directory, e.g. "figures/core/loss_curves.png"
    alt: str


@dataclass
class BulletList:
    items: list[str]


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)   # Paragraph | Table | Image | BulletList | Section

    def add(self, *blocks) -> "Section":
        self.blocks.extend(blocks)
        return self


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)    # shown under the title, before the sections
    sections: list[Section] = field(default_factory=list)

    def to_markdown(self) -> str:
        parts = [f"# {_one_line(self.title)}"]
        parts += [_block_md(b, level=2) for b in self.blocks]
        parts += [_block_md(s, level=2) for s in self.sections]
        return "\n\n".join(p for p in parts if p) + "\n"

    def to_html(self, base_dir: Path) -> str:
        body = [f"<h1>{_inline_html(self.title)}</h1>"]
        body += [_block_html(b, 2, base_dir) for b in self.blocks]
        body += [_block_html(s, 2, base_dir) for s in self.sections]
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )


# ---------------------------------------------------------------------------------------- markdown

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cell_md(text: str) -> str:
    return _one_line(text).replace("|", "\\|") or " "


def _block_md(block, level: int) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_cell_md(h) for h in block.headers) + " |",
                 "|" + "|".join("---" for _ in block.headers) + "|"]
        lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Image):
        return f"![{_one_line(block.alt)}]({block.path})"
    if isinstance(block, BulletList):
        return "\n".join(f"- {_one_line(item)}" for item in block.items)
    if isinstance(block, Section):
        parts = [f"{'#' * min(level, 6)} {_one_line(block.title)}"]
        parts += [_block_md(b, level + 1) for b in block.blocks]
        return "\n\n".join(p for p in parts if p)
    raise TypeError(f"unknown document block {type(block).__name__}")


# -------------------------------------------------------------------------------------------- html

_BOLD = re.compile(r"\*\*([^*]+)\*\*")

_CSS = (
    "body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1100px;"
    "margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "table{border-collapse:collapse;margin:0.8em 0;font-size:0.92em}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}code{background:#f4f4f4;padding:0 3px;border-radius:3px}"
    "img{max-width:100%;display:block;margin:0.6em 0}h2{border-bottom:1px solid #ddd;padding-bottom:3px}"
    ".missing{color:#a00}"
)


def _inline_html(text: str) -> str:
    """Escape, then turn `code` spans into <code> and **bold** into <strong> elements."""
    parts = str(text).split("`")
    out = []
    for i, part in enumerate(parts):
        escaped = html.escape(part, quote=False)
        if i % 2 == 1 and i < len(parts) - 1:                # inside a closed `code` span
            out.append(f"<code>{escaped}</code>")
        else:
            out.append(("`" if i % 2 == 1 else "") + _BOLD.sub(r"<strong>\1</strong>", escaped))
    return "".join(out)


def _image_data_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _block_html(block, level: int, base_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.headers)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Image):
        uri = _image_data_uri(base_dir / block.path)
        if uri is None:
            return f"<p class=\"missing\">image missing: {_inline_html(block.path)}</p>"
        return f"<img src=\"{uri}\" alt=\"{html.escape(block.alt)}\">"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Section):
        tag = f"h{min(level, 6)}"
        inner = [f"<{tag}>{_inline_html(block.title)}</{tag}>"]
        inner += [_block_html(b, level + 1, base_dir) for b in block.blocks]
        return "<section>\n" + "\n".join(inner) + "\n</section>"
    raise TypeError(f"unknown document block {type(block).__name__}")
