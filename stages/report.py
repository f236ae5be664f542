"""DVC stage: write the per-run report (markdown + self-contained HTML) and log it to the MLflow run."""

import json

from pipeline import atomic, layout, tracking
from pipeline.console import run_main
from pipeline.params import load_params
from pipeline.reports import run_report


def main() -> None:
    params = load_params()
    evaluation = json.loads(layout.EVALUATION.read_text())
    calibration = json.loads(layout.CALIBRATION.read_text())
    grid_png = layout.SAMPLE_GRID.read_bytes()
    md = run_report.markdown(params.model, evaluation, calibration)
    page = run_report.html_page(params.model, evaluation, calibration, grid_png)
    atomic.write_text(layout.REPORTS_DIR / "report.md", md)
    atomic.write_text(layout.REPORTS_DIR / "report.html", page)

    import mlflow

    run_id = json.loads(layout.RUN_INFO.read_text())["run_id"]
    with tracking.reopen_run(layout.repo_root(), run_id, params.model, params.seed):
        mlflow.log_artifact(str(layout.REPORTS_DIR / "report.html"), "report")
        mlflow.log_artifact(str(layout.REPORTS_DIR / "report.md"), "report")
    print(f"wrote {layout.REPORTS_DIR}/report.html and report.md")


if __name__ == "__main__":
    run_main(main)
