"""Where each stage's outputs live, relative to the repository root (dvc.yaml declares the same paths)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
PARAMS_CHECK = Path("outputs/params_check.txt")  # written by stages/check_params.py
RAW_DIR = Path("data/raw")
PREPARED = Path("data/prepared/mnist.npz")
STACKED = Path("data/prepared/stacked_mnist.npz")  # index triples into PREPARED's training images

EVALUATOR_DIR = Path("outputs/evaluator")
CLASSIFIER = EVALUATOR_DIR / "classifier.pt"
REFERENCE = EVALUATOR_DIR / "reference.npz"
CALIBRATION = Path("outputs/calibration/calibration.json")
# PacGAN's released mode counter (Stacked MNIST), or a marker saying why it was not trained (pipeline/instrument/mode_counter.py)
MODE_COUNTER = Path("outputs/mode_counter/classifier.pt")

TRAIN_DIR = Path("outputs/train")
GENERATOR = TRAIN_DIR / "generator.pt"
RUN_INFO = TRAIN_DIR / "mlflow_run.json"
LOSS_HISTORY = TRAIN_DIR / "losses.csv"
COLLAPSE_CURVE = TRAIN_DIR / "collapse_curve.csv"
# Replica 0's rows of the two long-format CSVs, for `dvc plots`: DVC 3 draws one line per file and column
# and has no group-by-column property, so the long files (all replicas interleaved) would draw a zigzag.
LOSS_HISTORY_PLOT = TRAIN_DIR / "losses_r0.csv"
COLLAPSE_CURVE_PLOT = TRAIN_DIR / "collapse_curve_r0.csv"
# The preset `model` names, resolved: a params file for DVC (dvc.yaml top-level `params:`), so
# `dvc params diff` and `dvc exp show` show objective, optimizer, lr, ... and not only the preset name.
RESOLVED_VARIANT = TRAIN_DIR / "variant.yaml"

EVALUATE_DIR = Path("outputs/evaluate")
SAMPLES = EVALUATE_DIR / "samples.npz"
SAMPLE_GRID = EVALUATE_DIR / "sample_grid.png"
CLASS_HISTOGRAM = EVALUATE_DIR / "class_histogram.csv"
MODE_HISTOGRAM = EVALUATE_DIR / "mode_histogram.csv"  # Stacked MNIST: samples per digit triple
REPLICA_TABLE = EVALUATE_DIR / "replicas.csv"  # one row per replica
REPLICA_GRIDS = EVALUATE_DIR / "grids"  # replica_<r>.png, every evaluated replica's fixed-noise grid

METRICS_DIR = Path("metrics")
EVALUATOR_METRICS = METRICS_DIR / "evaluator.json"
MODE_COUNTER_METRICS = METRICS_DIR / "mode_counter.json"
TRAIN_METRICS = METRICS_DIR / "train.json"
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"

REPORTS_DIR = Path("reports")


def repo_root(cwd: Path | None = None) -> Path:
    """The real repository root: $DVC_ROOT inside a DVC stage (also for queued and --temp runs, whose
    working directory is a temporary copy), else git's top level, else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return Path(top).resolve()
    except (OSError, subprocess.CalledProcessError):
        return (cwd or Path.cwd()).resolve()
EVALUATION = EVALUATE_DIR / "evaluation.json"
