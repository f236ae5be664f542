"""DVC stage: download and verify the four MNIST files into data/raw."""

from pipeline.common import layout
from pipeline.common.console import progress_bar, run_main
from pipeline.data.download import download_all, mirrors_from_env
from pipeline.common.params import load_params


def main() -> None:
    params = load_params().download
    with progress_bar() as bar:
        tasks: dict[str, int] = {}

        def on_progress(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"download {name}", total=total)
            bar.update(tasks[name], completed=done, total=total)

        used = download_all(
            layout.RAW_DIR,
            mirrors_from_env(),
            timeout=params.timeout_s,
            retries=params.retries,
            backoff=params.backoff_s,
            progress=on_progress,
        )
    for name, mirror in used.items():
        print(f"{name}: verified, from {mirror}")


if __name__ == "__main__":
    run_main(main)
