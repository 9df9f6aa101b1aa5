"""The report card (tinyllm_utils.analysis.report): REPORT.md written from a run's files alone, with the
environment, each stage's wall time and peak memory, the data card, the training table, Table IV, the methods
compared with intervals, findings, the edge table, the names behind the short labels and the figures; and the
executed notebooks `make figures` copies beside it, stamped with their run."""

import importlib.util
import json
from pathlib import Path

import pytest

from tinyllm_utils.analysis import report
from tinyllm_utils.stages import analysis as analysis_stage

TREE = Path(__file__).parent / "fixtures" / "outputs_tree" / "make_tree.py"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_run_records(run: Path, commit: str = COMMIT) -> None:
    """What the pipeline writes around the fixture's evaluations: pipeline.json, stage markers, notebooks, and
    stage 02's data card."""
    (run / "pipeline.json").write_text(json.dumps({
        "run_id": run.name, "parameters": {"profile": "quick"}, "created": "2026-12-01T10:00:00+00:00",
        "git": {"commit": commit, "dirty": False},
        "packages": {"torch": "2.13.0", "transformers": "5.25.0", "bfcl-eval": "2026.3.23"},
        "hardware": {"machine": "x86_64", "cpu_count": 4, "memory_gb": 15.6, "python": "3.11.9",
                     "platform": "Linux", "cuda": None},
        "cpu": {"model": "Test CPU 9000", "usable_cores": 2, "thread_env": {"OMP_NUM_THREADS": "2"}}}))
    data = run / "02_data_filtering"
    data.mkdir(exist_ok=True)
    (data / "data_card.json").write_text(json.dumps({
        "rows": {"train": 400, "validation": 100}, "rejected": 37,
        "sources": [{"source": "exec_simple", "kept": 300, "rejected": 20}, {"source": "sql", "kept": 200,
                                                                               "rejected": 17}],
        "category_mix": [{"split": "train", "category": "simple", "made": "original", "rows": 250},
                         {"split": "train", "category": "parallel", "made": "original", "rows": 150}],
        "token_lengths": {"train": {"prompt": {"50%": 700.0, "max": 1900.0}, "answer": {"50%": 40.0, "max": 250.0}}}}))
    for index, stage in enumerate(sorted(p.name for p in run.iterdir() if report.STAGE_FOLDER.match(p.name))):
        folder = run / stage
        (folder / "stage.json").write_text(json.dumps({
            "key": "k", "seconds": 61.0 + index, "peak_rss_mb": 1500.0 + index, "git": {"commit": commit,
                                                                                         "dirty": False},
            "finished": f"2026-12-01T1{index}:00:00+00:00"}))
        (folder / f"{stage}.ipynb").write_text(json.dumps({
            "cells": [], "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"papermill": {"parameters": {"stage_dir": str(folder)}}}}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_tree", TREE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = module.build(tmp_path_factory.mktemp("tree") / "outputs")
    add_run_records(root / "quick")
    return root / "quick"


@pytest.fixture(scope="module")
def built(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_figures")
    analysis_stage.make_figures(run, out, n_resamples=100, notebooks=True)
    return out


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_report_says_where_and_how_long_each_stage_ran(built):
    text = (built / report.REPORT).read_text()
    assert report.read_stamp(text)["run_id"] == "quick" and report.read_stamp(text)["commit"] == COMMIT
    environment = section(text, "Environment")
    assert "Test CPU 9000 (x86_64), 2 usable of 4 cores" in environment and "OMP_NUM_THREADS=2" in environment
    assert "15.6 GB" in environment and "torch 2.13.0" in environment and "bfcl-eval 2026.3.23" in environment
    stages = section(text, "Stages")
    assert "| 04_sft " in stages and "1 min 02 s" in stages and "1.5 GB" in stages and COMMIT[:10] in stages
    data = section(text, "Data")
    assert "train 400, validation 100" in data and "37 rows rejected" in data and "exec_simple 300" in data


def test_the_report_holds_the_training_table_tables_findings_names_and_figures(built):
    text = (built / report.REPORT).read_text()
    training = section(text, "Training")
    assert "| SFT " in training and "| SFT→DPO " in training and "600" in training
    table_iv = section(text, "Table IV")
    assert "gemma-3-270m SFT→DPO" in table_iv and "TinyLLM paper, best" in table_iv
    assert "Qwen3-1.7B (FC)" not in table_iv  # the leaderboard rows stay in table_iv.md
    methods = section(text, "Methods compared")
    assert "simple_python" in methods and "[" in methods and "B − A" in methods
    assert "gemma-3-270m SFT→DPO − gemma-3-270m SFT" in methods
    findings = section(text, "Findings")
    assert "paired comparisons" in findings and "the most entries correctly" in findings
    assert "| SFT " in section(text, "Edge profile")
    names = section(text, "Names")
    assert "| gemma-3-270m SFT→DPO " in names and "gemma-3-270m-sft-dpo" in names
    figures = [line.split("(")[-1].rstrip(")") for line in section(text, "Figures").splitlines()
               if line.startswith("![")]
    assert "category_heatmap.png" in figures and all((built / f).exists() for f in figures)
    assert len(figures) == len(report.FIGURES)


def test_make_figures_copies_the_stamped_notebooks_and_its_folder_is_one_run(built, run):
    notebooks = sorted(p.name for p in (built / report.NOTEBOOKS).glob("*.ipynb"))
    assert notebooks == sorted(f"{p.name}.ipynb" for p in report.stage_folders(run))
    stamp = json.loads((built / report.NOTEBOOKS / "04_sft.ipynb").read_text())["metadata"]["tinyllm"]
    assert (stamp["run_id"], stamp["stage"], stamp["commit"]) == ("quick", "04_sft", COMMIT)
    assert "[04_sft.ipynb](notebooks/04_sft.ipynb)" in (built / report.REPORT).read_text()
    assert report.check_one_run(built) == []


def test_a_stage_without_records_reads_as_missing_not_as_zero(run, tmp_path):
    (run.parent / "bare").mkdir()
    out = tmp_path / "out"
    analysis_stage.make_figures(run.parent / "bare", out, n_resamples=50)
    text = (out / report.REPORT).read_text()
    assert "No evaluation under the run." in text and "Stage 02 did not run" in text
    assert report.read_stamp(text)["commit"] is None
    assert report.check_one_run(out)  # no commit, no results: not a reference run
