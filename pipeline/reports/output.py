"""Writing a report: <stem>.md, <stem>.html and the figure files the markdown links to, all atomically."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import atomic
from pipeline.reports.document import Document, to_html, to_markdown


def write(doc: Document, directory: Path, stem: str, figure_dir: str) -> list[Path]:
    """Write the report into `directory`; figures go to `directory/figure_dir`, which the report owns:
    PNGs left there by an earlier report are removed so the folder holds exactly what the markdown links."""
    directory = Path(directory)
    figures = directory / figure_dir
    written = []
    for fig in doc.figures():
        path = figures / f"{fig.name}.png"
        atomic.write_bytes(path, fig.png)
        written.append(path)
    if figures.is_dir():
        for stale in set(figures.glob("*.png")) - set(written):
            stale.unlink()
    # Figures first: when the markdown appears, every file it links to is already there.
    md, page = directory / f"{stem}.md", directory / f"{stem}.html"
    atomic.write_text(md, to_markdown(doc, figure_dir))
    atomic.write_text(page, to_html(doc))
    return [page, md, *written]
