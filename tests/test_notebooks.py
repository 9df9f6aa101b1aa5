"""Notebooks and the smoke pipeline: jupytext pairs, clean commits, parameters = smoke profile, honest resume.

The pipeline tests run the real smoke workload (gemma-3-270m on llama.cpp) into temporary folders: once
uninterrupted (the reference), once killed with SIGKILL in the middle of stage 01 and again in the middle of
stage 03 and resumed, and once with one stage-02 parameter changed.
"""

import ast
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import psutil
import pytest
from datasets import load_from_disk

from tinyllm_utils.core.notebooks import unsynced_cells
from tinyllm_utils.core.params import PROJECT_ROOT
from tinyllm_utils.core.profiles import NOTEBOOK_DIR, STAGES, resolve_profile
from tinyllm_utils.core.results import read_jsonl
from tinyllm_utils.pipeline import run_pipeline

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SMOKE = resolve_profile("smoke")["stages"]
SMOKE_ALL = resolve_profile("smoke", include=list(STAGES))["stages"]  # + stages smoke leaves out by default (08)
VOLATILE = {"seconds"}  # wall-clock timing: the only field of a prediction that may differ between runs
FIRST_THREE = ["01_baseline_evaluation", "02_data_filtering", "03_pair_construction"]  # what the resume tests need


def test_every_stage_has_a_notebook_pair():
    assert [p.stem for p in NOTEBOOKS] == sorted(STAGES)  # numbered by topic; the analysis runs last
    assert not (NOTEBOOK_DIR / "build").exists()  # no notebooks generated from code held in strings


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_and_its_py_percent_twin_agree(path):
    assert path.with_suffix(".py").read_text().count('# %% tags=["parameters"]') == 1
    assert unsynced_cells(path) == []


def test_a_diverging_pair_is_detected(tmp_path):
    source = NOTEBOOKS[0]
    shutil.copy(source, tmp_path / source.name)
    text = source.with_suffix(".py").read_text().replace("pd.set_option", "pd.set_option  # edited", 1)
    (tmp_path / source.with_suffix(".py").name).write_text(text)
    assert unsynced_cells(tmp_path / source.name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_defaults_are_the_smoke_profile(path):
    stage = path.stem
    defaults = {name: ast.literal_eval(p["default"]) for name, p in papermill.inspect_notebook(str(path)).items()}
    assert defaults.pop("stage_dir") == f"outputs/smoke/{stage}"
    assert defaults == SMOKE_ALL[stage]


# ---------------------------------------------------------------- the smoke pipeline, for real


def _predictions(run_root: Path) -> dict:
    out = {}
    for path in sorted((run_root / "01_baseline_evaluation").glob("*/predictions/*.jsonl")):
        rows = read_jsonl(path)
        assert len({r["id"] for r in rows}) == len(rows), f"duplicate rows in {path}"
        out[path.relative_to(run_root).as_posix()] = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    return out


def _pairs(run_root: Path) -> dict:
    saved = load_from_disk(str(run_root / "03_pair_construction" / "pairs"))
    return {split: data.to_list() for split, data in saved.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted smoke run of every stage."""
    root = tmp_path_factory.mktemp("outputs")
    yield run_pipeline("smoke", run_id="reference", output_root=root, progress=False)
    shutil.rmtree(root, ignore_errors=True)  # GBs of trained weights: free the disk for the modules after


@pytest.mark.pipeline
def test_smoke_pipeline_writes_every_stage(reference):
    stage = reference / "01_baseline_evaluation"
    executed = nbformat.read(stage / "01_baseline_evaluation.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    metrics = json.loads((stage / "gemma-3-270m" / "metrics.json").read_text())
    smoke = SMOKE["01_baseline_evaluation"]
    assert list(metrics["categories"]) == smoke["categories"]
    for category, m in metrics["categories"].items():
        expected = smoke["multi_turn_limit"] if category.startswith("multi_turn") else smoke["limit"]
        lines = (stage / "gemma-3-270m" / "predictions" / f"{category}.jsonl").read_text().splitlines()
        assert m["n"] == expected == len(lines)

    data = reference / "02_data_filtering"
    report = {r["step"]: r for r in csv.DictReader((data / "filter_report.csv").open())}
    assert int(report["decontamination"]["removed"]) >= 398  # chatable and multi_turn_composite, measured
    dataset = load_from_disk(str(data / "dataset"))
    assert len(dataset["train"]) > 100 and len(dataset["validation"]) > 20

    saved = _pairs(reference)
    assert sum(len(split) for split in saved.values()) >= SMOKE["03_pair_construction"]["limit"]
    for split in saved.values():
        for pair in split:
            assert pair["prompt"].endswith("<start_of_turn>model\n") and pair["chosen"] != pair["rejected"]
    for name in SMOKE:
        marker = json.loads((reference / name / "stage.json").read_text())
        assert marker["parameters"] == SMOKE[name] and len(marker["key"]) == 64
        assert not (reference / name / "stage.running.json").exists()
    assert json.loads((reference / "03_pair_construction" / "stage.json").read_text())["inputs"] == {
        "02_data_filtering": json.loads((data / "stage.json").read_text())["key"]}


@pytest.mark.pipeline
def test_every_trained_model_is_evaluated_like_the_baseline(reference):
    baseline_dir = reference / "01_baseline_evaluation" / "gemma-3-270m"
    baseline = json.loads((baseline_dir / "run.json").read_text())["parameters"]
    baseline_ids = json.loads((baseline_dir / "metrics.json").read_text())["selected_ids"]
    labels = {}
    for stage in ("04_sft", "05_dpo", "06_hybrid"):
        for training_file in sorted((reference / stage).glob("*/training.json")):
            method_dir = training_file.parent
            training = json.loads(training_file.read_text())
            spec = json.loads((method_dir / training["checkpoint"] / "model_spec.json").read_text())  # cycle-k/dpo/final
            labels[spec["method"]] = spec
            assert spec["base_model"] == "gemma-3-270m" and spec["parent"] and spec["prompt_format"] == "gemma"
            assert len(list((method_dir / "gguf").glob("*-F16.gguf"))) == 1
            assert (method_dir / training["curves"]).read_text().count("\n") >= 2  # a header and at least one step
            # every trainer counts the rows it left out as too long (GRPO: prompts over grpo_max_prompt_length)
            assert training["rows"] >= 1 and training["dropped_too_long"] >= 0 and training["epochs"] > 0
            assert training["training_method"].endswith("_lora")  # the smoke profile trains LoRA everywhere
            # a cycle's seconds are its answering (recorded per answer) and its training; its rate, training's
            assert (training["generation_seconds"] is not None) == spec["method"].startswith("cycle")
            (eval_dir,) = [p.parent for p in (method_dir / "eval").glob("*/metrics.json")]
            run = json.loads((eval_dir / "run.json").read_text())
            for key in ("seed", "backend", "max_new_tokens", "limit", "multi_turn_limit", "stop_when_hopeless",
                        "grammar"):
                assert run["parameters"][key] == baseline[key], (method_dir, key)
            assert run["parameters"]["model"].endswith("-F16.gguf")
            selected = json.loads((eval_dir / "metrics.json").read_text())["selected_ids"]
            assert selected and all(selected[c] == baseline_ids[c] for c in selected)  # the same entries
    assert {"sft-lora", "dpo", "sft→dpo", "sft→grpo"} <= set(labels), sorted(labels)
    assert labels["sft→dpo"]["parent"] == "04_sft/sft-lora/final"  # its path in the run: outputs may move
    analysis = reference / "08_analysis"
    assert "overall (v3 scoring)" in (analysis / "table_iv.md").read_text()
    assert (analysis / "findings.md").exists()
    results = pd.read_parquet(analysis / "results.parquet").drop_duplicates("key").set_index("method")
    # SFT→DPO's compute includes the SFT it started from, and it is compared with that SFT model
    assert results.loc["sft→dpo", "training_seconds_total"] == pytest.approx(
        results.loc["sft→dpo", "training_seconds"] + results.loc["sft-lora", "training_seconds"])
    comparisons = pd.read_csv(analysis / "comparisons.csv")
    assert ((comparisons["a_key"] == results.loc["sft-lora", "key"])
            & (comparisons["b_key"] == results.loc["sft→dpo", "key"])).any()
    assert not results["checkpoint"].dropna().str.startswith("/").any()  # named inside the outputs folder


@pytest.mark.pipeline
def test_rerun_with_nothing_changed_skips_every_stage(reference, capsys):
    capsys.readouterr()
    run_pipeline("smoke", run_id="reference", output_root=reference.parent, progress=False)
    out = capsys.readouterr().out
    assert out.count("skipped (done)") == len(SMOKE), out


@pytest.mark.pipeline
def test_upstream_change_reruns_exactly_the_stages_downstream(reference, tmp_path, capsys):
    root = tmp_path / "outputs"
    # the trained weights (GBs) play no part here: 04-06 only have to be there to be set aside
    shutil.copytree(reference, root / "reference", ignore=shutil.ignore_patterns("*.safetensors", "*.gguf", "*.pt"))
    capsys.readouterr()
    run_pipeline("smoke", run_id="reference", output_root=root, progress=False, stages=FIRST_THREE,
                 overrides={"02_data_filtering": {"max_distractors": 2}})
    out = capsys.readouterr().out
    assert "01_baseline_evaluation: skipped (done)" in out
    assert "02_data_filtering: rerun (max_distractors: 3 -> 2)" in out
    # everything computed from the old 02 is set aside at once, also the stages this call does not run
    for later in ("03_pair_construction", "04_sft", "05_dpo", "06_hybrid", "08_analysis"):
        assert f"02_data_filtering: {later} was computed from its previous results: set aside" in out
    assert "03_pair_construction: run ->" in out
    stale = sorted(p.name for p in (root / "reference" / ".stale").iterdir())
    assert [name.rsplit("-", 1)[0] for name in stale] == ["02_data_filtering", "03_pair_construction", "04_sft",
                                                          "05_dpo", "06_hybrid", "08_analysis"]
    assert sorted(p.name for p in (root / "reference").iterdir() if p.is_dir()) == [
        ".stale", *FIRST_THREE]  # 04-07 wait for a rerun; nothing stale is left where a reader looks


def _start(run_id: str, root: Path) -> subprocess.Popen:
    env = dict(os.environ, TINYLLM_OUTPUTS=str(root), PYTHONUNBUFFERED="1")  # conftest's JUPYTER_RUNTIME_DIR
    return subprocess.Popen([sys.executable, "-m", "tinyllm_utils.pipeline", "--profile", "smoke", "--run-id", run_id,
                             "--stages", *FIRST_THREE],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the notebook kernel dies with it


def _kill_all(process: subprocess.Popen) -> None:
    """SIGKILL the pipeline and everything it started (the notebook kernel runs in a session of its own)."""
    family = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)
    psutil.wait_procs(family, timeout=30)


def _kill_when(process: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the pipeline ended before {what}:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            _kill_all(process)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    _kill_all(process)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.pipeline
def test_sigkill_mid_stage_01_and_mid_stage_03_then_resume_gives_identical_results(reference, tmp_path):
    root = tmp_path / "outputs"
    run = root / "killed"
    in_checkout_before = set(PROJECT_ROOT.glob("kernel-ipc-*"))
    first_category = SMOKE["01_baseline_evaluation"]["categories"][1]  # one category finished, the next started
    _kill_when(_start("killed", root),
               lambda: _lines(run / "01_baseline_evaluation/gemma-3-270m/predictions" / f"{first_category}.jsonl") >= 1,
               "stage 01 to be half-way")
    assert not (run / "01_baseline_evaluation" / "stage.json").exists()  # never taken as finished

    generations = run / "03_pair_construction" / "generations"
    _kill_when(_start("killed", root),
               lambda: generations.exists() and any(_lines(p) >= 2 for p in generations.glob("*.jsonl")),
               "stage 03 to be half-way")
    assert (run / "01_baseline_evaluation" / "stage.json").exists()
    assert not (run / "03_pair_construction" / "stage.json").exists()

    finish = _start("killed", root)
    out, _ = finish.communicate(timeout=900)
    assert finish.returncode == 0, out[-3000:]
    assert "01_baseline_evaluation: skipped (done)" in out and "02_data_filtering: skipped (done)" in out
    assert "03_pair_construction: resumed" in out
    assert _predictions(run) == _predictions(reference)
    assert _pairs(run) == _pairs(reference)
    for name in FIRST_THREE:
        assert json.loads((run / name / "stage.json").read_text())["key"] == \
            json.loads((reference / name / "stage.json").read_text())["key"]
    assert set(PROJECT_ROOT.glob("kernel-ipc-*")) == in_checkout_before  # the killed kernels left nothing here
