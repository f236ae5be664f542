"""The `ganpipe` command line: evaluate any sample file, draw from a trained generator, compare runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pipeline.common import cpu_kernels, layout

# First, before anything loads torch or numpy: the kernels the repository's params ask for, so that
# `ganpipe evaluate` computes the bytes the evaluate stage does (pipeline/common/cpu_kernels.py).
cpu_kernels.pin_or_exit(layout.repo_root() / "params.yaml")

import typer  # noqa: E402

from pipeline.common.console import report_error, stderr
from pipeline.common.errors import GanpipeError
from pipeline.common.mlflow_store import EXPERIMENT
from pipeline.instrument.sample_count import MAX_SAMPLES

MAX_GRID = 10_000  # a 100 x 100 grid of 28-pixel digits is already 2,800 pixels square

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode="markdown")


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"ganpipe {version('ganpipe')}")
        except PackageNotFoundError:  # run from a checkout without `pip install -e .`
            typer.echo("ganpipe (not installed; run from a source checkout)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """The ganpipe command line: evaluate any sample file, draw from a trained generator, compare runs."""


def _fail(exc: GanpipeError) -> None:
    raise typer.Exit(report_error(exc))


def _root() -> Path:
    from pipeline.common.layout import repo_root

    return repo_root()


@app.command(epilog="""**Examples**

`ganpipe evaluate --samples outputs/evaluate/samples.npz`

`ganpipe evaluate --samples my_gan.npz --out my_gan.json 2> verdict.txt`

The JSON goes to stdout; a one-line verdict goes to stderr.""")
def evaluate(
    samples: Path = typer.Option(..., "--samples", help="An .npz with `images` (and optional `labels`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON result to this file."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="The params.yaml holding the evaluate settings."),
    dataset: str = typer.Option(
        "mnist", "--dataset", help="mnist, or stacked-mnist for (N, 3, 28, 28) samples (adds modes_captured, mode_kl)."
    ),
    max_samples: int = typer.Option(
        MAX_SAMPLES, "--max-samples", min=1, help="Refuse files with more images than this (memory and time grow with it)."
    ),
) -> None:
    """Run the mode-collapse instrument on a sample file; print one JSON object (and a verdict line on stderr)."""
    from pipeline.common import atomic, views

    try:
        if out:
            atomic.check_writable(out)  # before the work, not after it
        result = evaluate_file(samples, params_file, dataset, max_samples)
    except GanpipeError as exc:
        _fail(exc)
    text = json.dumps(result, indent=2)
    if out:
        atomic.write_text(out, text + "\n")
    typer.echo(text)
    stderr.print(views.verdict_line(result), highlight=False, soft_wrap=True, markup=False)


def evaluate_file(samples: Path, params_file: Path, dataset: str = "mnist", max_samples: int = MAX_SAMPLES) -> dict:
    import time

    from pipeline.instrument import evaluator, reference, samples_file
    from pipeline.instrument.sample_count import minimum_samples
    from pipeline.common import cpu_threads, layout
    from pipeline.instrument.calibration import calibrate, check_pool
    from pipeline.instrument.evaluation import evaluate_beyond_pool, evaluate_images
    from pipeline.common.params import load_params

    root = _root()
    params_path = params_file if params_file.is_absolute() or params_file.exists() else root / params_file
    params = load_params(params_path)
    cpu_threads.use(params.evaluator.threads)  # the stage's count: the same file gives the same numbers here
    if dataset not in ("mnist", "stacked-mnist"):
        raise GanpipeError(f"--dataset {dataset!r} is not known; use mnist or stacked-mnist.")
    # validate before loading anything heavy
    if dataset == "stacked-mnist":
        images, labels = samples_file.load_stacked(samples, max_samples), None
    else:
        images, labels = samples_file.load(samples, max_samples)
    classifier = evaluator.load(root / layout.CLASSIFIER)
    ref = reference.load(root / layout.REFERENCE)
    ratio = params.evaluate.verdict.min_share_ratio
    fewest = minimum_samples(ref.class_hist, ratio, params.evaluate.nearest_k)
    if len(images) < fewest:
        raise GanpipeError(
            f"{samples} holds {len(images)} samples; the instrument needs at least {fewest}. With fewer, even "
            f"real MNIST digits often leave some digit under {ratio} x its MNIST share (the line below which "
            "the verdict calls a digit missing), so collapse could not be told from chance. Draw at least "
            f"{fewest} samples from your generator (e.g. `ganpipe sample --n {max(fewest, 1000)} --out samples.npz`)."
        )
    # Real baselines exist for at most half the unseen pool (calibration.py); a larger file is measured in
    # full and judged on a random subset of that size (evaluation.evaluate_beyond_pool).
    judged = min(len(images), ref.n_pool // 2)
    cal_path = root / layout.CALIBRATION
    calibration = json.loads(cal_path.read_text()) if cal_path.is_file() else None
    if calibration is not None and "baseline" not in calibration:
        calibration = None  # made by an older ganpipe, from in-sample real subsets: recalibrate honestly
    if calibration is None or calibration["n_samples"] != judged:
        # Thresholds depend on the sample count; calibrate for this count on a few real subsets.
        settings = params.evaluate.model_copy(
            update={"n_samples": judged, "calibration_subsets": min(5, params.evaluate.calibration_subsets)}
        )
        check_pool(ref, judged)
        start = time.perf_counter()
        with stderr.status(f"calibrating the verdict for {judged} samples on real data"):
            calibration = calibrate(ref, settings, params.evaluator.seed)
        stderr.print(f"calibrated the verdict for {judged} samples in {time.perf_counter() - start:.0f} s")
    else:
        settings = params.evaluate.model_copy(update={"n_samples": judged})
    if dataset == "stacked-mnist":
        from pipeline.instrument.stacked import evaluate_stacked

        with stderr.status(f"measuring {len(images)} stacked samples"):
            return evaluate_stacked(images, classifier, ref, calibration, settings, params.evaluator.seed)
    start = time.perf_counter()
    if len(images) > judged:
        stderr.print(
            f"{len(images)} samples: every metric uses all of them; the verdict judges a random {judged}, the most "
            f"that real data can calibrate (half the {ref.n_pool} unseen real images)", highlight=False
        )
        with stderr.status("") as status:
            result = evaluate_beyond_pool(
                images, labels, classifier, ref, calibration, settings, params.evaluator.seed,
                phase=lambda text: status.update(text),
            )
    else:
        with stderr.status(f"measuring {len(images)} samples"):
            result = evaluate_images(images, labels, classifier, ref, calibration, settings, params.evaluator.seed)
    stderr.print(f"measured {len(images)} samples in {time.perf_counter() - start:.0f} s")
    return result


@app.command(epilog="""**Examples**

`ganpipe sample --digit 7 --out sevens.png` (the workspace's conditional generator)

`ganpipe sample --exp wgan-tiny --n 1000 --out wgan.npz` (a DVC experiment, as `dvc exp ls` names it)

`ganpipe sample --run-id 3f2a... --out grid.png` (an MLflow run's logged generator)""")
def sample(
    digit: Optional[int] = typer.Option(None, "--digit", min=0, max=9, help="The digit to draw (conditional models)."),
    n: int = typer.Option(100, "--n", min=1, help="How many images."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    out: Path = typer.Option(Path("samples.png"), "--out", help="A .png grid or an .npz of images."),
    generator_path: Optional[Path] = typer.Option(None, "--generator", help="Default: the pipeline's trained generator."),
    exp: Optional[str] = typer.Option(None, "--exp", help="Draw from this DVC experiment's generator (a name from `dvc exp ls`, or a git revision)."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Draw from this MLflow run's logged generator (a training's parent run: its --replica child)."),
    max_samples: int = typer.Option(MAX_SAMPLES, "--max-samples", min=1, help="Refuse --n above this (memory grows with it)."),
    replica: int = typer.Option(0, "--replica", min=0, help="Which trained replica to draw from (0 to replicas - 1)."),
) -> None:
    """Draw images from a trained generator (replica 0 unless --replica) into a PNG grid or an .npz."""
    import math

    import numpy as np

    from pipeline.common import atomic, layout
    from pipeline.gan import sampling, sources
    from pipeline.reports.figures import save_png
    from pipeline.gan.generator_file import load_generator

    try:
        if n > max_samples:
            raise GanpipeError(
                f"--n {n:,} is above the cap of {max_samples:,} samples: {n:,} images need "
                f"{n * 784 * 4 / 2**30:.1f} GiB of memory as floats (more for a PNG grid). Draw them in batches "
                f"of at most {max_samples:,} with different --seed values, or raise the cap with --max-samples {n} "
                "if this machine has the memory."
            )
        if out.suffix == ".png" and n > MAX_GRID:
            raise GanpipeError(f"--n {n:,} is too many for a .png grid (at most {MAX_GRID:,}); write an .npz instead.")
        chosen = [o for o, v in (("--generator", generator_path), ("--exp", exp), ("--run-id", run_id)) if v]
        if len(chosen) > 1:
            raise GanpipeError(f"{' and '.join(chosen)} each choose a generator; pass only one of them.")
        atomic.check_writable(out)
        if exp:
            generator, variant = sources.from_experiment(_root(), exp, replica)
        elif run_id:
            generator, variant = sources.from_mlflow_run(_root(), run_id, replica)
        else:
            generator, variant = load_generator(generator_path or _root() / layout.GENERATOR, replica)
        if digit is not None and not variant.conditional:
            raise GanpipeError(
                f"--digit needs a conditional generator, but this one was trained as an unconditional "
                f"{variant.objective} GAN. Train a conditional variant (`dvc exp run -S model=cgan`) or drop --digit."
            )
        if out.suffix not in (".png", ".npz"):
            raise GanpipeError(f"--out {out}: use a .png (picture) or .npz (arrays) file name.")
        labels = None
        if variant.conditional:
            labels = np.full(n, digit) if digit is not None else np.arange(n) % 10
        images = sampling.sample(generator, n, seed=seed, labels=labels)
    except GanpipeError as exc:
        _fail(exc)
    if out.suffix == ".npz":
        extra = {} if labels is None else {"labels": labels.astype(np.uint8)}
        atomic.save_npz(out, images=sampling.to_uint8(images), **extra)
    else:
        cols = min(n, 10)
        save_png(out, sampling.tile(images, math.ceil(n / cols), cols))
    typer.echo(f"wrote {n} samples to {out}")


def _split(values: Optional[list[str]]) -> list[str]:
    """Repeated options and comma-separated lists both work: --models wgan,cgan or --models wgan --models cgan."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


@app.command(epilog="""**Examples**

`ganpipe compare` (the latest run of every model, seed, dataset and budget; writes reports/comparison.html)

`ganpipe compare --models vanilla,wgan --out-dir /tmp/cmp`

`ganpipe compare --runs 3f2a...,9c1b...`

`ganpipe compare --across-budgets` (rank runs of one dataset together whatever their iterations)""")
def compare(
    runs: Optional[list[str]] = typer.Option(
        None, "--runs", help="MLflow run ids to compare (default: the latest finished run of each model, seed, dataset, preset and budget)."
    ),
    models: Optional[list[str]] = typer.Option(None, "--models", help="Only these models, e.g. --models vanilla,wgan."),
    experiment: str = typer.Option(EXPERIMENT, "--experiment", help="The MLflow experiment to read."),
    across_budgets: bool = typer.Option(
        False, "--across-budgets",
        help="Rank trainings of one dataset against each other even when their iterations, replicas or evaluation "
        "samples differ (by default each budget is its own group). Datasets are never mixed.",
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", help="Where comparison.html/.md go (default: reports/ at the repository root)."
    ),
    grid_id: Optional[str] = typer.Option(None, "--grid", help="Exactly the finished runs of this `ganpipe grid` (its id, e.g. grid-1a2b3c4)."),
    record: Optional[Path] = typer.Option(
        None, "--record", help="Also write these runs as a recorded study (results/NAME.json) that `ganpipe tables` renders into the docs."
    ),
    title: str = typer.Option("", "--title", help="With --record: the study's title."),
    command: str = typer.Option("", "--command", help="With --record: the command that made the runs, to reproduce them."),
    machine: str = typer.Option("", "--machine", help="With --record: where the runs were made (default: this machine's CPU and core count)."),
) -> None:
    """Compare runs from the MLflow store: metrics table, sample grids, training curves, verdicts."""
    from pipeline.common import layout
    from pipeline.reports.compare import compare as write_comparison

    from pipeline.common import atomic

    root = _root()
    try:
        out = out_dir or root / layout.REPORTS_DIR
        atomic.check_writable(out / "comparison.html")
        if grid_id:
            from pipeline.grid.results import grid_runs

            runs = [*(runs or []), *grid_runs(root, experiment, grid_id)]
        with stderr.status("reading runs from the MLflow store"):
            record_as = None
            if record:
                if not (title and command):
                    raise GanpipeError("--record writes a study that names its conditions: give --title (what it "
                                       "measures) and --command (the command that made the runs) with it.")
                record_as = {"file": record, "title": title, "command": command, "machine": machine or _this_machine()}
            written = write_comparison(root, out, experiment, _split(runs), _split(models), across_budgets, record_as)
    except GanpipeError as exc:
        _fail(exc)
    typer.echo(f"wrote {written[0]} and {written[1]}")


def _this_machine() -> str:
    import os

    from pipeline.common.fingerprint import cpu_description

    return f"{cpu_description().get('model name', 'unknown CPU')}, {os.cpu_count()} cores"


@app.command(epilog="""**Examples**

`ganpipe tables` (re-render every table README.md and docs/ mark from its study in results/)

`ganpipe tables --check` (exit status 1, naming the pages, when a committed table is not what its study renders)
""")
def tables(
    check: bool = typer.Option(False, "--check", help="Only check: exit 1 if a page's table differs from its study."),
) -> None:
    """Render the result tables of README.md and docs/ from the recorded studies in results/."""
    from pipeline.common import atomic
    from pipeline.reports import recorded

    root = _root()
    try:
        stale = recorded.stale_pages(root)
    except GanpipeError as exc:
        _fail(exc)
    names = ", ".join(str(page.relative_to(root)) for page in stale)
    if check:
        if stale:
            typer.echo(f"these pages' tables differ from what results/ renders: {names}. Run `ganpipe tables` to "
                       "re-render them (an edit belongs in the study's JSON, not in the page).", err=True)
            raise typer.Exit(1)
        typer.echo("every table matches its recorded study")
        return
    for page, text in stale.items():
        atomic.write_text(page, text)
    typer.echo(f"re-rendered {names}" if stale else "every table already matches its recorded study")


@app.command(epilog="""**Examples**

`ganpipe fingerprint` (this machine against every committed CPU's fingerprint in fingerprints/)

`ganpipe fingerprint --out fingerprints/my-cpu.json` (record it, e.g. to commit a CPU it was verified on)""")
def fingerprint(
    out: Optional[Path] = typer.Option(None, "--out", help="Also write this machine's fingerprint (JSON) here."),
) -> None:
    """Check this machine's portable kernels against the CPUs they were verified on (about a minute): a
    difference means results computed here would not match theirs byte for byte. Exit status 1 on one."""
    from pipeline.common import atomic
    from pipeline.common import fingerprint as fp

    with stderr.status("computing the portable kernels' fingerprint (1 and 2 threads)"):
        mine = fp.take()
    if out:
        atomic.write_json(out, mine)
    cpu = mine["cpu"]
    typer.echo(f"this machine: {cpu.get('model name', '?')} (vendor {cpu.get('vendor_id', '?')}, family "
               f"{cpu.get('cpu family', '?')}, model {cpu.get('model', '?')}; {cpu.get('flags', '')})")
    status = 0
    for name, theirs in fp.committed().items():
        if theirs["versions"] != mine["versions"]:
            typer.echo(f"{name}: not comparable (made with {theirs['versions']}, this machine has {mine['versions']})")
            continue
        differ = fp.differences(mine, theirs)
        total = sum(len(ops) for ops in mine["results"].values())
        typer.echo(f"{name}: {total - len(differ)} of {total} operations give the same bytes"
                   + (f"; differ: {', '.join(differ)}" if differ else ""))
        status = status or int(bool(differ))
    raise typer.Exit(status)


@app.command(
    "exp-show",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="""**Examples**

`ganpipe exp-show` (or `make exp-show`)

`ganpipe exp-show --csv` · `ganpipe exp-show -A` (any further `dvc exp show` option)""",
)
def exp_show(ctx: typer.Context) -> None:
    """`dvc exp show` on one screen: experiment, model, dataset, seed, replicas, iterations, collapse rate and
    its 95% interval, median FLD."""
    import subprocess

    from pipeline.common.views import exp_show_command

    raise typer.Exit(subprocess.run(exp_show_command(ctx.args), cwd=_root()).returncode)


@app.command(epilog="""**Examples**

`ganpipe grid -S model=vanilla,wgan,cgan -S seed=0,1,2` (this machine's cores; no remote needed)

`ganpipe grid -S model=wgan,cgan -S seed=0,1 --address 10.0.0.5:6379 --gpus-per-point 0.25`

`ganpipe compare --grid grid-1a2b3c4` (exactly that grid's runs)""")
def grid(
    sets: list[str] = typer.Option([], "-S", "--set-param", help="An axis in DVC's syntax, e.g. -S model=vanilla,wgan; repeat for more axes."),
    address: Optional[str] = typer.Option(None, "--address", help="The Ray cluster (HOST:PORT from `ray start --head`, or ray://HOST:PORT); default: a new local Ray instance on this machine."),
    cpus_per_point: float = typer.Option(1.0, "--cpus-per-point", min=0.01, help="The least CPUs Ray reserves for each point; a point whose train.threads or evaluator.threads is larger asks for that many."),
    gpus_per_point: float = typer.Option(0.0, "--gpus-per-point", min=0.0, help="GPUs for each point; fractions share a device (e.g. 0.25)."),
    name: Optional[str] = typer.Option(None, "--name", help="The grid id, prefix of every point's experiment name (default: grid-<digest of commit and -S>)."),
    retries: int = typer.Option(2, "--retries", min=0, help="How often a failed transfer step of a point (clone, fetch, push) is retried in place, after 5 s, 10 s, ..."),
    reruns: int = typer.Option(3, "--reruns", min=0, help="How often Ray reruns a point whose node was lost or whose transfer kept failing (never a point whose training failed)."),
    transfer_timeout: float = typer.Option(1800.0, "--transfer-timeout", min=1.0, help="Seconds a clone, fetch or push may take before it counts as stuck (and is retried)."),
    run_timeout: Optional[float] = typer.Option(None, "--run-timeout", min=1.0, help="Seconds a point's `dvc exp run` may take before it is stopped and the point fails (default: no limit)."),
    forward_env: list[str] = typer.Option([], "--forward-env", help="Also pass this environment variable of yours to every point (repeat for more); credentials of the usual remotes are passed already."),
    shared_folders: bool = typer.Option(False, "--shared-folders", help="Folder remotes are mounted at the same path on every node of the cluster (otherwise refused there)."),
    git_remote: Optional[str] = typer.Option(None, "--git-remote", help="The git remote the points clone from and push to (default: origin; none on one machine: this repository)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every point's result (node, device, wall time, collapse rate, ...) to this JSON file."),
) -> None:
    """Run an experiment grid (DVC's -S product) as one Ray task per point, on this machine or a Ray cluster."""
    from pipeline.grid.driver import Options, run_grid

    options = Options(
        sets, address, cpus_per_point, gpus_per_point, name, retries, reruns, git_remote, json_out,
        transfer_timeout, run_timeout, tuple(forward_env), shared_folders,
    )
    try:
        status = run_grid(_root(), options)
    except GanpipeError as exc:
        _fail(exc)
    raise typer.Exit(status)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
