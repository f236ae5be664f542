"""Terminal output shared by the stages and the CLI: progress bars and user-error handling."""

from __future__ import annotations

import sys
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.common.errors import GanpipeError

stderr = Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=transient,
    )


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
