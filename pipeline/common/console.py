"""Terminal output shared by the stages and the CLI: progress bars and user-error handling.

On a terminal, progress is a live rich bar with the latest losses and checks beside it. Without one
(queued DVC experiments, CI, `> log`), a bar cannot redraw, so a plain line is printed every few
percent instead: a log then shows how far a run got and how fast, never minutes of silence.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.common.errors import GanpipeError

stderr = Console(stderr=True)
PLAIN_EVERY_PCT = 10  # without a terminal, one progress line per this many percent


def progress_bar(transient: bool = False, console: Console | None = None, latest: bool = False) -> Progress:
    """A rich bar; with latest=True, tasks carry a `latest` field shown after the time columns."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *([TextColumn("{task.fields[latest]}")] if latest else []),
        console=console or stderr,
        transient=transient,
    )


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class StageProgress:
    """Progress of one long step (training, evaluation) that reads well live and in a log.

    `update(done, **latest)` moves it to `done` of `total` and remembers the latest named readings
    (losses, coverage, FLD), which are shown next to the bar or on each plain line."""

    def __init__(self, description: str, total: int, console: Console | None = None, every_pct: int = PLAIN_EVERY_PCT):
        self.console = console or stderr
        self.description, self.total, self.every_pct = description, max(int(total), 1), every_pct
        self.latest: dict[str, Any] = {}
        self.done = 0
        self._bar: Progress | None = None
        self._task = None
        self._next_pct = every_pct
        self._finished_shown = False
        self._first: tuple[float, int] | None = None  # (time, done) of the first update
        self._start = time.perf_counter()

    def __enter__(self) -> "StageProgress":
        self._start = time.perf_counter()
        if self.console.is_terminal:
            self._bar = progress_bar(console=self.console, latest=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, latest="setting up")
        else:
            self.console.print(f"{self.description}: started ({self.total} steps)", highlight=False, soft_wrap=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif exc[0] is None and self.done < self.total:
            self.console.print(f"{self.description}: stopped at {self.done}/{self.total}", highlight=False)

    def readings(self) -> str:
        return " · ".join(f"{k} {_number(v)}" for k, v in self.latest.items())

    def update(self, done: int, **latest: Any) -> None:
        self.latest.update(latest)
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, latest=self.readings())
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, done)
        pct = 100 * done // self.total
        finished = done >= self.total
        if (pct < self._next_pct and not finished) or self._finished_shown:
            return
        self._finished_shown = finished
        while self._next_pct <= pct:
            self._next_pct += self.every_pct
        # The rate counts from the first reading, so set-up time (loading data, the step-0 grid) does
        # not inflate the ETA; elapsed counts from the start.
        (t0, done0), elapsed = self._first, now - self._start
        eta = _clock((now - t0) / (done - done0) * (self.total - done)) if done > done0 else "?"
        if done >= self.total:
            eta = _clock(0)
        readings = self.readings()
        self.console.print(
            f"{self.description}: {pct:3d}% ({done}/{self.total}) elapsed {_clock(elapsed)}, ETA {eta}"
            + (f" · {readings}" if readings else ""),
            highlight=False,
            soft_wrap=True,
        )

    def advance(self, steps: int = 1, **latest: Any) -> None:
        self.update(self.done + steps, **latest)


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Keep MLflow's INFO lines (system-metrics monitor start/stop, model logging notes) out of a live
    progress bar; its warnings and errors still show."""
    import mlflow  # noqa: F401  (importing it configures its loggers; the level is set after that)

    logger = logging.getLogger("mlflow")
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def report_error(exc: GanpipeError) -> int:
    # escape(): the message may quote user input such as "[0.5, 0.999]", which rich would read as markup.
    stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return exc.exit_code


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user error prints one paragraph and exits non-zero, no traceback."""
    try:
        main()
    except GanpipeError as exc:
        sys.exit(report_error(exc))
    except KeyboardInterrupt:
        stderr.print("interrupted: every output already written is complete (each is written whole or not at all); run the command again.")
        sys.exit(130)
