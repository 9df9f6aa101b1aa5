"""Notebooks: committed clean, defaults equal the smoke profile, and the smoke pipeline (01 -> 02 -> 03) runs."""

import ast
import csv
import json

import nbformat
import papermill
import pytest
from datasets import load_from_disk

from tinyllm_utils.pipeline import NOTEBOOK_DIR, load_profiles, run_pipeline

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_defaults_are_the_smoke_profile(path):
    stage = path.stem
    profile = load_profiles()["smoke"]["stages"][stage]
    defaults = {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(path)).items()}
    stage_dir = defaults.pop("stage_dir")
    assert defaults == profile
    assert stage_dir == f"outputs/smoke/{stage}"
    for name in ("quick", "full", "paper"):  # every profile sets every parameter
        assert set(load_profiles()[name]["stages"][stage]) == set(profile)


def test_smoke_pipeline_runs_end_to_end_and_resumes(tmp_path, capsys):
    run_root = run_pipeline("smoke", run_id="smoke-test", output_root=tmp_path, progress=False)
    stage = run_root / "01_baseline_evaluation"
    assert (stage / "01_baseline_evaluation.ipynb").exists() and (stage / "DONE.json").exists()
    executed = nbformat.read(stage / "01_baseline_evaluation.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    metrics = json.loads((stage / "gemma-3-270m" / "metrics.json").read_text())
    smoke = load_profiles()["smoke"]["stages"]["01_baseline_evaluation"]
    assert list(metrics["categories"]) == smoke["categories"]
    for category, m in metrics["categories"].items():
        expected = smoke["multi_turn_limit"] if category.startswith("multi_turn") else smoke["limit"]
        lines = (stage / "gemma-3-270m" / "predictions" / f"{category}.jsonl").read_text().splitlines()
        assert m["n"] == expected == len(lines)

    data = run_root / "02_data_filtering"
    report = {r["step"]: r for r in csv.DictReader((data / "filter_report.csv").open())}
    assert int(report["decontamination"]["removed"]) >= 398  # chatable and multi_turn_composite, measured
    dataset = load_from_disk(str(data / "dataset"))
    assert len(dataset["train"]) > 100 and len(dataset["validation"]) > 20

    pairs_dir = run_root / "03_pair_construction"
    saved = load_from_disk(str(pairs_dir / "pairs"))
    assert sum(len(split) for split in saved.values()) >= load_profiles()["smoke"]["stages"][
        "03_pair_construction"]["limit"]
    for split in saved.values():
        for pair in split:
            assert pair["prompt"].endswith("<start_of_turn>model\n") and pair["chosen"] != pair["rejected"]
    assert (pairs_dir / "review_sample.csv").exists() and (pairs_dir / "DONE.json").exists()

    capsys.readouterr()
    run_pipeline("smoke", run_id="smoke-test", output_root=tmp_path, progress=False)
    assert "already done, skipped" in capsys.readouterr().out
