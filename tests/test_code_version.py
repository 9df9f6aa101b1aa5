"""A stage's key covers the code it runs: its notebook and the package modules that imports, transitively, each by
its normalized syntax tree. These tests edit a copy of the package and the notebooks and check which stages'
code versions move."""

import shutil
from pathlib import Path

import pytest

from tinyllm_utils.core import code_version
from tinyllm_utils.core.profiles import STAGES, notebook_path

PACKAGE = Path(code_version.__file__).resolve().parents[1]
EVALUATING = ["01_baseline_evaluation", "03_pair_construction", "04_sft", "05_dpo", "06_hybrid", "07_edge_profile",
              "08_analysis"]


@pytest.fixture
def tree(tmp_path):
    """A copy of the package and the notebooks, so edits never touch the checkout."""
    shutil.copytree(PACKAGE, tmp_path / "tinyllm_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(notebook_path("01_baseline_evaluation").parent, tmp_path / "notebooks",
                    ignore=shutil.ignore_patterns("*.py"))
    return tmp_path


def versions(tree: Path) -> dict[str, dict[str, str]]:
    return {stage: code_version.code_versions(tree / "notebooks" / f"{stage}.ipynb", tree / "tinyllm_utils")
            for stage in STAGES}


def rerun(before: dict, after: dict) -> list[str]:
    return [stage for stage in STAGES if before[stage] != after[stage]]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_every_stage_counts_its_notebook_and_the_modules_it_imports(tree):
    found = versions(tree)
    for stage, stage_versions in found.items():
        assert "notebook" in stage_versions and all(len(v) == 64 for v in stage_versions.values())
    assert "tinyllm_utils.stages.baseline" in found["01_baseline_evaluation"]
    assert "tinyllm_utils.bfcl.decoding" in found["01_baseline_evaluation"]  # through evaluate -> scoring
    assert "data:configs/models.yaml" in found["01_baseline_evaluation"]  # the registry names it
    assert "tinyllm_utils.analysis.figures" not in found["01_baseline_evaluation"]
    assert not any(name.endswith("profiles.yaml") for v in found.values() for name in v)  # parameters, not code


def test_editing_a_comment_or_docstring_reruns_nothing(tree):
    before = versions(tree)
    decoding = tree / "tinyllm_utils" / "bfcl" / "decoding.py"
    edit(decoding, '"""', '"""A docstring edited. ')
    edit(decoding, "\nfrom __future__ import annotations\n", "\nfrom __future__ import annotations  # a comment\n\n")
    edit(tree / "tinyllm_utils" / "analysis" / "figures.py", "def plot_category_heatmap(",
         "# a new comment\ndef plot_category_heatmap(")
    assert rerun(before, versions(tree)) == []


def test_editing_a_figure_function_reruns_only_the_analysis(tree):
    before = versions(tree)
    edit(tree / "tinyllm_utils" / "analysis" / "figures.py", "def plot_category_heatmap(results: pd.DataFrame):",
         "def plot_category_heatmap(results: pd.DataFrame):\n    results = results.copy()")
    assert rerun(before, versions(tree)) == ["08_analysis"]


def test_editing_the_decoder_reruns_every_stage_that_evaluates(tree):
    before = versions(tree)
    edit(tree / "tinyllm_utils" / "bfcl" / "decoding.py", "\nclass DecodeError", "\nDECODER_EDITED = True\n\n\nclass DecodeError")
    assert set(EVALUATING) <= set(rerun(before, versions(tree)))


def test_editing_a_notebook_narrative_reruns_nothing_and_its_code_reruns_that_stage(tree):
    import json

    before = versions(tree)
    path = tree / "notebooks" / "04_sft.ipynb"
    notebook = json.loads(path.read_text())
    markdown = next(c for c in notebook["cells"] if c["cell_type"] == "markdown")
    markdown["source"] = ["# a new title\n"] + markdown["source"]
    path.write_text(json.dumps(notebook))
    assert rerun(before, versions(tree)) == []
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"][-1]
    code["source"] = code["source"] + ["\nprint('one more line')\n"]
    path.write_text(json.dumps(notebook))
    assert rerun(before, versions(tree)) == ["04_sft"]


def test_a_data_file_counts_for_the_modules_that_name_it(tree):
    before = versions(tree)
    registry = tree / "tinyllm_utils" / "configs" / "models.yaml"
    registry.write_text(registry.read_text() + "\n# an edit\n")
    changed = rerun(before, versions(tree))
    assert "01_baseline_evaluation" in changed
    profiles = tree / "tinyllm_utils" / "configs" / "profiles.yaml"
    after = versions(tree)
    profiles.write_text(profiles.read_text() + "\n# an edit\n")
    assert rerun(after, versions(tree)) == []  # profiles reach a key through the stage's parameters


def test_the_plan_names_what_changed_and_runs_nothing(tmp_path, capsys):
    from tinyllm_utils import pipeline
    from tinyllm_utils.core.profiles import resolve_profile, stage_material
    from tinyllm_utils.core.work import finish_work, open_work

    plan = resolve_profile("smoke")["stages"]
    root = tmp_path / "run"
    work = open_work(root / "02_data_filtering", stage_material("02_data_filtering", plan["02_data_filtering"], {}))
    finish_work(work)
    rows = {stage: (status, reasons) for stage, status, reasons in
            pipeline.plan_pipeline("smoke", "run", output_root=tmp_path)}
    assert rows["02_data_filtering"] == ("skip", ["done"])
    assert rows["01_baseline_evaluation"][0] == "run" and rows["03_pair_construction"][0] == "run"
    assert rows["04_sft"] == ("run", ["after 01_baseline_evaluation"])
    changed = pipeline.plan_pipeline("smoke", "run", output_root=tmp_path,
                                     overrides={"02_data_filtering": {"max_distractors": 1}})
    status, reasons = dict((s, (st, r)) for s, st, r in changed)["02_data_filtering"]
    assert status == "rerun" and any("max_distractors" in r for r in reasons)
    assert sorted(p.name for p in root.iterdir()) == ["02_data_filtering"]  # nothing moved, nothing made
    assert (root / "02_data_filtering" / "stage.json").exists()
