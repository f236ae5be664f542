"""DVC stage: measure real subsets of the evaluation size to calibrate the collapse verdict."""

from pipeline.common import atomic, cpu_threads, layout
from pipeline.instrument import reference
from pipeline.instrument.calibration import calibrate
from pipeline.common.console import progress_bar, run_main
from pipeline.common.params import load_params


def main() -> None:
    params = load_params()
    cpu_threads.use(params.evaluator.threads)
    ref = reference.load(layout.REFERENCE)
    with progress_bar() as bar:
        task = bar.add_task("calibrate on real subsets", total=params.evaluate.calibration_subsets)
        result = calibrate(
            ref, params.evaluate, params.evaluator.seed,
            on_subset=lambda done: bar.update(task, completed=done),
        )
    atomic.write_json(layout.CALIBRATION, result)
    print(f"{layout.CALIBRATION}: thresholds {result['thresholds']}")


if __name__ == "__main__":
    run_main(main)
