"""Every figure function on the fixture outputs tree, stage-01 tables on selected rows only, and the
regeneration command (`python -m tinyllm_utils.stages.analysis --run ... --out ...`)."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.text
import pandas as pd
import pytest

from tinyllm_utils.analysis import baseline_views, figures, reference, runs
from tinyllm_utils.stages import analysis as analysis_stage

TREE = Path(__file__).parent / "fixtures" / "outputs_tree" / "make_tree.py"
FIGURES = ["category_heatmap", "method_ablation", "multi_turn_vs_params", "accuracy_vs_training_compute",
           "error_kinds", "training_curves", "accuracy_latency_memory", "baseline_accuracy", "baseline_failure_modes"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_tree", TREE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(tmp_path_factory.mktemp("tree") / "outputs")


@pytest.fixture(scope="module")
def tables(outputs):
    run = outputs / "quick"
    evaluations = runs.find_evaluations(run)
    return {"results": runs.collect(run, n_resamples=200), "entries": runs.entries(evaluations),
            "curves": runs.training_curves(run)}


def titles(fig) -> str:
    return " ".join(ax.get_title() for ax in fig.axes)


def test_figure_functions_draw_what_they_measure(tables):
    results, entries = tables["results"], tables["entries"]
    heatmap = figures.plot_category_heatmap(results)
    assert "per category" in titles(heatmap) and "n = 2-4" in titles(heatmap)
    columns = [t.get_text() for t in heatmap.axes[0].get_xticklabels()]  # one column per model/method, short
    assert len(columns) == results["key"].nunique() and "gemma-3-270m SFT→DPO" in columns
    assert "simple_java (n=4)" in [t.get_text() for t in heatmap.axes[0].get_yticklabels()]
    ablation = figures.plot_method_ablation(results)
    labels = {t.get_text() for t in ablation.axes[0].get_xticklabels()}
    assert "overall (v3 scoring)" in labels and "overall (v4 scoring)" not in labels  # never run: no bar, not 0
    assert "every method" in titles(ablation)  # the per-category panel: trained models have no composites
    few = results[~results["category"].isin(["live_relevance"]) & (results["kind"] == "category")]
    matplotlib.pyplot.close(ablation)
    ablation = figures.plot_method_ablation(few)  # a run of a few categories: no Table IV panel, the categories'
    assert len(ablation.axes) == 1 and "every method" in titles(ablation)
    multi = figures.plot_multi_turn_vs_params(results)
    assert "v3 and v4" in titles(multi) and "n = 8" in titles(multi)
    legend = " ".join(t.get_text() for t in multi.axes[0].get_legend().get_texts())
    assert "BFCL v3" in legend and "BFCL v4" in legend and "ours" in legend
    compute = figures.plot_accuracy_vs_compute(results)
    assert "2 trained" in titles(compute)
    matplotlib.pyplot.close(compute)
    compute = figures.plot_accuracy_vs_compute(few)  # no Table IV score: the call categories' mean instead
    assert "mean of 14 call categories" in titles(compute) and "2 trained" in titles(compute)
    kinds = figures.plot_error_kinds(entries)
    assert f"({len(entries)} entries)" in titles(kinds)
    curves = figures.plot_training_curves(tables["curves"])
    assert [ax.get_ylabel() for ax in curves.axes] == ["loss", "eval_loss"]
    assert "logged steps" in titles(curves)
    for fig in (heatmap, ablation, multi, compute, kinds, curves):
        matplotlib.pyplot.close(fig)


def every_figure(tables, outputs):
    results, entries = tables["results"], tables["entries"]
    stage = outputs / "quick" / "01_baseline_evaluation"
    edge = pd.read_csv(next((outputs / "quick").rglob("edge_table.csv"))).assign(n=8)  # the fixture records none
    from tinyllm_utils.analysis import edge_views

    return {"category_heatmap": figures.plot_category_heatmap(results),
            "method_ablation": figures.plot_method_ablation(results),
            "multi_turn_vs_params": figures.plot_multi_turn_vs_params(results),
            "accuracy_vs_training_compute": figures.plot_accuracy_vs_compute(results),
            "error_kinds": figures.plot_error_kinds(entries),
            "training_curves": figures.plot_training_curves(tables["curves"]),
            "accuracy_latency_memory": edge_views.plot_edge_pareto(edge),
            "baseline_accuracy": baseline_views.plot_category_accuracy(baseline_views.metrics_table(stage)),
            "baseline_failure_modes": baseline_views.plot_failure_modes(baseline_views.failure_mode_table(stage))}


def test_every_figure_says_its_n_and_is_legible_at_report_size(tables, outputs):
    """A report page shows a figure about 900 px wide: wider than 12 inches, or text under 8 pt, and it cannot
    be read there. Each says how many entries (or steps) it rests on."""
    for name, fig in every_figure(tables, outputs).items():
        text = titles(fig) + " " + (fig._suptitle.get_text() if fig._suptitle else "") + " ".join(
            t.get_text() for ax in fig.axes for t in ax.get_yticklabels())
        assert re.search(r"\bn ?= ?\d|\d+ (selected )?entries", text), (name, text)
        assert fig.get_size_inches()[0] <= 12, (name, fig.get_size_inches())
        fig.canvas.draw()
        small = {t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text() and t.get_fontsize() < 8}
        assert not small, (name, small)
        matplotlib.pyplot.close(fig)


def test_short_labels_name_the_method_and_the_table_names_the_model(tables):
    results = tables["results"]
    labels = set(results["label"])
    assert {"gemma-3-270m", "gemma-3-270m SFT", "gemma-3-270m SFT→DPO", "gemma-3-270m SFT Q8_0"} <= labels
    names = runs.label_table(results).set_index("label")
    assert names.loc["gemma-3-270m SFT→DPO", "model"] == "gemma-3-270m-sft-dpo"
    assert len(names) == results["key"].nunique()
    assert runs.short_label("cycle 2", "gemma-3-270m-sft-lora-dpo_lora-dpo_lora", "gemma-3-270m") == "cycle 2"
    assert runs.short_label("sft→grpo", "gemma-3-270m-sft-grpo-Q4_0", quantization="Q4_0", edge=True) == \
        "SFT→GRPO Q4_0"
    assert runs.short_label("base", "Salesforce/xLAM-2-1b-fc-r", several_bases=True) == "xLAM-2-1b-fc-r"


def test_training_curves_read_the_trainer_log(tables):
    curves = tables["curves"]
    loss = curves[curves["metric"] == "loss"].sort_values("step")
    assert loss["value"].tolist() == [2.0, 1.4, 1.1] and set(loss["method"]) == {"sft-lora"}


def test_stage_01_tables_use_the_selected_rows_only(outputs):
    stage = outputs / "quick" / "01_baseline_evaluation"
    failures = baseline_views.failure_mode_table(stage)
    # the reused folder holds 6 predictions per category, 3 selected
    assert failures.loc["qwen3-0.6b"].sum(axis=1).tolist() == [3, 3]
    metrics = baseline_views.metrics_table(stage)
    assert set(metrics["model"]) == {"gemma-3-270m", "xlam-2-1b-fc-r", "qwen3-0.6b"}  # hub id nested deeper
    for model, group in metrics.groupby("model"):
        assert failures.loc[model].sum(axis=1).sum() == group["n"].sum()
    text = baseline_views.baseline_findings(metrics, failures)
    assert "**qwen3-0.6b**" in text and "(6 entries)" in text


def test_cli_rebuilds_everything_from_files_and_prints_wall_time(outputs, tmp_path, capsys):
    analysis_stage.main(["--run", str(outputs / "quick"), "--out", str(tmp_path), "--n-resamples", "200"])
    out = capsys.readouterr().out
    assert "figures: rebuilt" in out and out.strip().endswith(" s")
    written = {Path(line).name for line in out.splitlines() if line.startswith(str(tmp_path))}
    for name in FIGURES:
        assert {f"{name}.png", f"{name}.pdf"} <= written, name
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
    for name in ("results.parquet", "results.csv", "table_iv.md", "comparisons.csv", "findings.md",
                 "baseline_findings.md"):
        assert (tmp_path / name).exists(), name
    assert "## Missing (a stage that did not run; not an error)\n\n- none" in (tmp_path / "figures_status.md").read_text()
    ours = runs.collect(outputs / "quick", n_resamples=50)["key"].nunique()
    table = (tmp_path / "table_iv.csv").read_text().splitlines()
    assert len(table) == 1 + ours + len(reference.load_reference_rows())


def test_stages_that_did_not_run_are_reported_missing(outputs, tmp_path):
    only_baseline = tmp_path / "run"
    shutil.copytree(outputs / "smoke", only_baseline)
    written = analysis_stage.make_figures(only_baseline, tmp_path / "out", n_resamples=200)
    status = (tmp_path / "out" / "figures_status.md").read_text()
    for name in ("accuracy_vs_training_compute", "training_curves", "accuracy_latency_memory"):
        assert f"- {name}:" in status and not (tmp_path / "out" / f"{name}.png").exists()
    assert (tmp_path / "out" / "category_heatmap.png") in written
    empty = tmp_path / "empty"
    empty.mkdir()
    analysis_stage.make_figures(empty, tmp_path / "out2", n_resamples=200)  # nothing ran: reported, no exception
    assert "baseline figures and tables" in (tmp_path / "out2" / "figures_status.md").read_text()


def test_import_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('pdf'); import tinyllm_utils.analysis.figures; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "pdf"
