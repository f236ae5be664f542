"""The result tables in README.md and docs/ are rendered from the recorded studies in results/ (`ganpipe
tables`), never typed: a hand edit of a rendered number, or a study changed without re-rendering, fails here."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.reports import recorded

REPO = Path(__file__).resolve().parents[1]


def test_every_committed_table_is_what_its_study_renders():
    assert recorded.stale_pages(REPO) == {}, "run `ganpipe tables` and commit the pages it re-renders"
    marked = [page for page in recorded.pages(REPO) if "<!-- table: " in page.read_text()]
    assert REPO / "README.md" in marked and REPO / "docs" / "results.md" in marked


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("README.md", "docs", "results"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, root / name)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "tables", "--check"], cwd=root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_number_edited_by_hand_in_a_rendered_table_is_caught(tmp_path):
    root = _copy(tmp_path)
    readme = root / "README.md"
    text = readme.read_text()
    assert "| vanilla | 3/8 (0) | 0.38 [0.14, 0.69] | 281.3 (38.3)" in text
    readme.write_text(text.replace("| 281.3 (38.3) |", "| 261.3 (38.3) |", 1))
    done = _check(root)
    assert done.returncode == 1 and "README.md" in done.stderr and "ganpipe tables" in done.stderr


def test_a_changed_study_re_renders_counts_and_interval_from_its_verdicts(tmp_path):
    root = _copy(tmp_path)
    study_file = root / "results" / "headline.json"
    study = json.loads(study_file.read_text())
    vanilla = next(v for v in study["variants"] if v["name"] == "vanilla")
    vanilla["verdicts"] = ["none"] * 7 + ["diverged"]  # 0 of 7 evaluated collapsed, one diverged
    study_file.write_text(json.dumps(study))
    assert _check(root).returncode == 1
    rendered = recorded.render_page(root, (root / "README.md").read_text())
    assert "| vanilla | 0/7 (1) | 0.00 [0.00, 0.35] |" in rendered  # Wilson's upper bound for 0/7
    assert "Machine: a 2-core Intel Xeon" in rendered and "Kernels: `native`" in rendered


def test_a_study_that_cannot_be_read_is_named_with_the_fix(tmp_path):
    root = _copy(tmp_path)
    (root / "results" / "headline.json").write_text("{ not json")
    done = _check(root)
    assert done.returncode != 0 and "results/headline.json" in done.stderr and "--record" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_table3_ablation_figures_quoted_in_results_are_what_the_recorded_studies_give():
    """docs/results.md's reading of issue 32's re-run quotes benchmarks/table3_ablation.py on the two recorded
    studies: the training changes' effect on PacDCGAN2 (counted issue 23's way) and the counters' disagreement."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/table3_ablation.py"), str(REPO / "results/table3-issue23.json"),
                           str(REPO / "results/table3-issue32.json")], capture_output=True, text=True, check=True, timeout=120)
    assert "-301.6 [-512.0, -91.2], U = 2, p = 0.032" in done.stdout  # PacDCGAN2: 380.0 -> 78.4 modes
    assert "counter, batch-stats: evaluator - released-cnn -46 to +115" in done.stdout
    assert "released-cnn_batch-stats: +25.2 [-39.6, +90.0], U = 17, p = 0.421" in done.stdout
    page = (REPO / "docs" / "results.md").read_text()
    assert "−302,\n  Welch [−512, −91], exact Mann–Whitney p = 0.032" in page and "−55 to +115" in page


def test_the_table3_ablation_reads_each_preset_at_its_last_recounted_step(tmp_path):
    """A study that also re-counted an earlier step (for a curve) gives the same ablation as its final
    re-count alone: the earlier rows, here with every count and agreement changed, are not mixed in."""
    def ablation(later: Path) -> str:
        return subprocess.run([sys.executable, str(REPO / "benchmarks/table3_ablation.py"), str(REPO / "results/table3-issue23.json"),
                               str(later)], capture_output=True, text=True, check=True, timeout=120).stdout

    study = json.loads((REPO / "results/table3-issue32.json").read_text())
    earlier = copy.deepcopy(study["recounts"][0])
    for row in earlier["recount"]:
        row["step"] = 2000
        row["agreement"] = {k: 0.5 for k in row["agreement"]}
        for way in row["ways"].values():
            way["modes_captured"] += 100
    study["recounts"].insert(0, earlier)
    (tmp_path / "curve.json").write_text(json.dumps(study))
    assert ablation(tmp_path / "curve.json") == ablation(REPO / "results/table3-issue32.json")
