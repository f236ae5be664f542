"""A report as a list of blocks, rendered twice: markdown (figures as linked files) and one
self-contained HTML page (figures embedded as data URIs).

Both reports build a `Document`; writing the content once keeps report.md and report.html in step.
Text may use three inline marks, **bold**, `code` and [links](http://...), which both renderers understand.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Iterator, Literal, Union

import pandas as pd

from pipeline.reports.figures import data_uri, png_size

MISSING = "—"  # how an absent value (no reference, not applicable) is shown


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Callout:
    """A boxed statement, e.g. the collapse verdict; the tone colours it in HTML."""

    title: str
    text: str = ""
    tone: Literal["alert", "warn", "ok", "info"] = "info"


@dataclass(frozen=True)
class Table:
    """Cells are shown as given: format numbers before building the frame."""

    frame: pd.DataFrame
    caption: str = ""
    id: str = ""  # the HTML table's id; by default its position in the document


@dataclass(frozen=True)
class Figure:
    name: str  # file stem under the markdown's figure folder, and the HTML element id
    png: bytes
    caption: str
    alt: str
    pixelated: bool = False  # sample images: enlarge without blurring
    row_labels: tuple[str, ...] = ()  # one label per image row, shown beside it (a CGAN grid's digits)


@dataclass(frozen=True)
class Gallery:
    """Figures side by side."""

    figures: tuple[Figure, ...]


Block = Union[Heading, Paragraph, Bullets, Callout, Table, Figure, Gallery]


@dataclass
class Document:
    title: str
    subtitle: str = ""
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> "Document":
        self.blocks.extend(blocks)
        return self

    def figures(self) -> Iterator[Figure]:
        for block in self.blocks:
            if isinstance(block, Figure):
                yield block
            elif isinstance(block, Gallery):
                yield from block.figures


# ----------------------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_image(fig: Figure, figure_dir: str) -> str:
    return f"![{_md_cell(fig.alt)}]({figure_dir}/{fig.name}.png)"


def _md_block(block: Block, figure_dir: str) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Callout):
        return f"> **{block.title}**" + (f"\n>\n> {block.text}" if block.text else "")
    if isinstance(block, Table):
        table = block.frame.map(_md_cell).to_markdown(index=False, disable_numparse=True)
        return (f"*{block.caption}*\n\n" if block.caption else "") + table
    if isinstance(block, Figure):
        return f"{_md_image(block, figure_dir)}\n\n*{block.caption}*"
    if isinstance(block, Gallery):
        # A one-row table is how markdown viewers (GitHub, MLflow) put images side by side.
        chunks = [block.figures[i : i + 4] for i in range(0, len(block.figures), 4)]
        parts = []
        for chunk in chunks:
            parts.append(
                "| " + " | ".join(_md_cell(f.caption) for f in chunk) + " |\n"
                + "|" + " --- |" * len(chunk) + "\n"
                + "| " + " | ".join(_md_image(f, figure_dir) for f in chunk) + " |"
            )
        return "\n\n".join(parts)
    raise TypeError(f"unknown block {block!r}")


def to_markdown(doc: Document, figure_dir: str) -> str:
    """Markdown whose images link to `<figure_dir>/<name>.png` (relative to the markdown file)."""
    head = [f"# {doc.title}"] + ([doc.subtitle] if doc.subtitle else [])
    return "\n\n".join(head + [_md_block(b, figure_dir) for b in doc.blocks]) + "\n"


# --------------------------------------------------------------------------------------------- html

STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa;
        --alert: #cf222e; --alert-bg: #ffebe9; --warn: #9a6700; --warn-bg: #fff8c5; --ok: #1a7f37; --ok-bg: #dafbe1; --info: #0969da; --info-bg: #ddf4ff; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg);
       max-width: 1360px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 17px; margin: 24px 0 8px; }
.subtitle { color: var(--muted); margin: 0 0 16px; }
nav { font-size: 14px; color: var(--muted); margin-bottom: 8px; }
nav a { color: var(--info); text-decoration: none; margin-right: 14px; white-space: nowrap; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; background: var(--bg-alt); padding: 1px 4px; border-radius: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
td { white-space: nowrap; }
td:last-child { white-space: normal; }  /* the last column holds prose (descriptions); the rest stay on one line */
th { background: var(--bg-alt); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
.table-caption { color: var(--muted); font-size: 14px; margin: 8px 0 0; }
.table-wrap { overflow-x: auto; }
.callout { border-left: 5px solid var(--info); background: var(--info-bg); padding: 10px 16px; border-radius: 6px; margin: 12px 0; }
.callout.alert { border-color: var(--alert); background: var(--alert-bg); }
.callout.warn { border-color: var(--warn); background: var(--warn-bg); }
.callout.ok { border-color: var(--ok); background: var(--ok-bg); }
.callout strong { font-size: 17px; }
.callout p { margin: 4px 0 0; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; display: block; }
figure img.pixelated { image-rendering: pixelated; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 6px; max-width: 900px; }
.rows { display: flex; align-items: stretch; gap: 6px; }
.rows ol { list-style: none; margin: 0; padding: 0; display: grid; grid-auto-rows: 1fr; font-size: 13px; color: var(--muted); }
.rows li { display: flex; align-items: center; justify-content: flex-end; min-width: 2.2em; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 20px; }
.gallery figure { margin: 0; }
.gallery figure img { width: 100%; }
"""


def _inline(text: str) -> str:
    """Escape text, then turn **bold**, `code` and [text](url) into tags."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', out)  # [text](url)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _is_numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.,]+(e[-+]?\d+)?( ± [\d.,e+-]+)?%?", str(text).strip()))


def _html_table(table: Table, index: int) -> str:
    frame = table.frame
    table_id = table.id or f"table-{index}"
    # Numbers read best right-aligned; pandas' to_html has no per-column alignment, so a scoped rule does it.
    numeric = [
        i + 1 for i, col in enumerate(frame.columns)
        if len(frame) and all(_is_numeric(v) or v == MISSING for v in frame[col].astype(str))
    ]
    rule = ", ".join(f"#{table_id} td:nth-child({i})" for i in numeric)
    style = f"<style>{rule} {{ text-align: right; white-space: nowrap; }}</style>" if rule else ""
    # Long snake_case headers (intra_class_diversity) may break after an underscore instead of widening the table.
    frame = frame.rename(columns=lambda c: str(c).replace("_", "_\u200b"))
    body = frame.to_html(index=False, escape=True, border=0, table_id=table_id, na_rep=MISSING)
    caption = f'<p class="table-caption">{_inline(table.caption)}</p>' if table.caption else ""
    return f'{caption}{style}<div class="table-wrap">{body}</div>'


def _html_figure(fig: Figure) -> str:
    width, height = png_size(fig.png)
    cls = ' class="pixelated"' if fig.pixelated else ""
    img = (
        f'<img id="{html.escape(fig.name)}"{cls} src="{data_uri(fig.png)}" width="{width}" height="{height}" '
        f'alt="{html.escape(fig.alt)}">'
    )
    if fig.row_labels:
        labels = "".join(f"<li>{html.escape(label)}</li>" for label in fig.row_labels)
        img = f'<div class="rows"><ol>{labels}</ol><div>{img}</div></div>'
    return f"<figure>{img}<figcaption>{_inline(fig.caption)}</figcaption></figure>"


def _html_block(block: Block, index: int) -> str:
    if isinstance(block, Heading):
        tag = f"h{block.level}"
        return f'<{tag} id="{_anchor(block.text)}">{_inline(block.text)}</{tag}>'
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Callout):
        text = f"<p>{_inline(block.text)}</p>" if block.text else ""
        return f'<div class="callout {block.tone}"><strong>{_inline(block.title)}</strong>{text}</div>'
    if isinstance(block, Table):
        return _html_table(block, index)
    if isinstance(block, Figure):
        return _html_figure(block)
    if isinstance(block, Gallery):
        return '<div class="gallery">' + "".join(_html_figure(f) for f in block.figures) + "</div>"
    raise TypeError(f"unknown block {block!r}")


def to_html(doc: Document) -> str:
    """One self-contained page: inline CSS, every image a data URI, nothing fetched from anywhere."""
    sections = [b for b in doc.blocks if isinstance(b, Heading) and b.level == 2]
    nav = " ".join(f'<a href="#{_anchor(h.text)}">{html.escape(h.text)}</a>' for h in sections)
    body = "\n".join(_html_block(b, i) for i, b in enumerate(doc.blocks))
    subtitle = f'<p class="subtitle">{_inline(doc.subtitle)}</p>' if doc.subtitle else ""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(doc.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<header><h1>{_inline(doc.title)}</h1>{subtitle}<nav>{nav}</nav></header>\n"
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
