"""The committed reference run (issue 35, item 4): `paper_figures/` holds REPORT.md, the tables, the figures and
the executed notebooks of ONE run at ONE commit. `report.check_one_run` says whether a folder does; it is tried
here on made-up folders, consistent and not, and then on `paper_figures/` once it holds notebooks."""

import json
from pathlib import Path

import pytest

from tinyllm_utils.analysis import report

PAPER_FIGURES = Path(__file__).resolve().parents[1] / "paper_figures"
COMMIT, OTHER = "a" * 40, "b" * 40
STAGES = ["01_baseline_evaluation", "04_sft", "08_analysis"]


def make_folder(folder: Path, run_id: str = "quick", commit: str = COMMIT) -> Path:
    """What `make figures` writes for a run at `commit`, reduced to what the checker reads."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = {"run_id": run_id, "commit": commit, "dirty": False, "profile": "quick", "created": "2026-12-01",
             "stages": {stage: commit for stage in STAGES}}
    (folder / report.REPORT).write_text(f"<!-- report-card {json.dumps(stamp)} -->\n# Report card\n")
    (folder / "results.csv").write_text(f"run_id,label\n{run_id},base\n{run_id},SFT\n")
    (folder / "figures_status.md").write_text(f"Rebuilt from `outputs/{run_id}` by the analysis.\n")
    (folder / report.NOTEBOOKS).mkdir(exist_ok=True)
    for stage in STAGES:
        stamp_notebook(folder / report.NOTEBOOKS / f"{stage}.ipynb", run_id, stage, commit)
    return folder


def stamp_notebook(path: Path, run_id: str, stage: str, commit: str, stage_dir: str | None = None) -> None:
    path.write_text(json.dumps({"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "tinyllm": {"run_id": run_id, "stage": stage, "commit": commit},
        "papermill": {"parameters": {"stage_dir": stage_dir or f"/work/outputs/{run_id}/{stage}"}}}}))


def edit_stamp(folder: Path, **changes) -> None:
    path = folder / report.REPORT
    stamp = report.read_stamp(path) | changes
    path.write_text(f"<!-- report-card {json.dumps(stamp)} -->\n# Report card\n")


def test_one_run_at_one_commit_passes(tmp_path):
    assert report.check_one_run(make_folder(tmp_path / "pf")) == []


@pytest.mark.parametrize("spoil, expected", [
    (lambda f: stamp_notebook(f / "notebooks" / "04_sft.ipynb", "quick", "04_sft", OTHER), "04_sft.ipynb is stamped"),
    (lambda f: stamp_notebook(f / "notebooks" / "04_sft.ipynb", "smoke", "04_sft", COMMIT), "04_sft.ipynb is stamped"),
    (lambda f: stamp_notebook(f / "notebooks" / "04_sft.ipynb", "quick", "04_sft", COMMIT,
                              "/work/outputs/smoke/04_sft"), "executed into /work/outputs/smoke/04_sft"),
    (lambda f: (f / "notebooks" / "04_sft.ipynb").unlink(), "no notebook of stage 04_sft"),
    (lambda f: (f / "results.csv").write_text("run_id,label\nquick,base\nsmoke,SFT\n"), "results.csv holds runs"),
    (lambda f: (f / "results.csv").unlink(), "results.csv is missing"),
    (lambda f: (f / "figures_status.md").write_text("Rebuilt from `outputs/smoke` by the analysis.\n"),
     "figures_status.md names outputs/smoke"),
    (lambda f: edit_stamp(f, stages={**{s: COMMIT for s in STAGES}, "04_sft": OTHER}), "stage 04_sft ran at commit"),
    (lambda f: edit_stamp(f, dirty=True), "uncommitted changes"),
    (lambda f: edit_stamp(f, commit=None), "records no commit"),
    (lambda f: (f / report.REPORT).write_text("# Report card\n"), "has no report-card stamp"),
    (lambda f: (f / report.REPORT).unlink(), "REPORT.md is missing"),
])
def test_files_of_another_run_or_commit_are_named(tmp_path, spoil, expected):
    folder = make_folder(tmp_path / "pf")
    spoil(folder)
    problems = report.check_one_run(folder)
    assert any(expected in p for p in problems), problems


@pytest.mark.skipif(not (PAPER_FIGURES / report.NOTEBOOKS).is_dir(),
                    reason="paper_figures/notebooks/ is not committed yet: the reference run (make reproduce, then "
                           "make figures) has not been recorded")
def test_the_committed_reference_run_is_one_run_at_one_commit():
    assert report.check_one_run(PAPER_FIGURES) == []
