"""The analysis stage (tinyllm_utils.analysis.runs) on a fixture outputs tree: collection, Table IV, reference rows,
paired statistics and generated findings."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tinyllm_utils.analysis import findings, runs, stats
from tinyllm_utils.analysis import reference as reference_rows
from tinyllm_utils.bfcl import aggregate
from tinyllm_utils.bfcl.data import ALL_CATEGORIES, LIVE_CATEGORIES, category_size, load_category
from tinyllm_utils.stages import analysis

TREE = Path(__file__).parent / "fixtures" / "outputs_tree" / "make_tree.py"


def load_tree_builder():
    spec = importlib.util.spec_from_file_location("make_tree", TREE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return load_tree_builder().build(tmp_path_factory.mktemp("tree") / "outputs")


@pytest.fixture(scope="module")
def results(outputs):
    return runs.collect(outputs, n_resamples=500)


def test_lineage_and_checkpoints_hold_when_outputs_move(tmp_path):
    root = load_tree_builder().build(tmp_path / "outputs")
    moved = root.rename(tmp_path / "elsewhere")
    evals = runs.collect(moved, n_resamples=50).drop_duplicates("key").set_index("model")
    dpo = evals.loc["gemma-3-270m-sft-dpo"]
    assert dpo["training_seconds_total"] == 1500.0  # the parent, named by its path in the run, is still found
    # the evaluated weights, named relative to the outputs folder (run.json recorded where they were)
    assert dpo["checkpoint"] == "quick/06_hybrid/sft-dpo/final"
    assert (evals.loc["gemma-3-270m-sft-lora", "key"], dpo["key"]) in findings.default_pairs(
        evals.reset_index())


def test_paths_into_an_outputs_folder_are_named_from_the_run_on():
    assert runs._outputs_path("/home/u/01_projects/outputs/quick/04_sft/sft-lora/final") == \
        "quick/04_sft/sft-lora/final"
    assert runs._outputs_path("/cache/models/gemma-3-270m-Q4_K_M.gguf") == "/cache/models/gemma-3-270m-Q4_K_M.gguf"
    assert runs._outputs_path("gemma-3-270m") == "gemma-3-270m"


def test_an_absolute_parent_recorded_by_earlier_runs_still_names_its_checkpoint_after_a_move(tmp_path):
    root = load_tree_builder().build(tmp_path / "outputs")
    run_file = root / "quick" / "06_hybrid" / "sft-dpo" / "eval" / "gemma-3-270m-sft-dpo" / "run.json"
    run = json.loads(run_file.read_text())
    run["model_spec"]["parent"] = str(root / "quick" / "04_sft" / "sft-lora" / "final")
    run_file.write_text(json.dumps(run))
    results = runs.collect(root.rename(tmp_path / "elsewhere"), n_resamples=50)
    dpo = results.drop_duplicates("key").set_index("model").loc["gemma-3-270m-sft-dpo"]
    assert (dpo["parent"], dpo["training_seconds_total"]) == ("04_sft/sft-lora/final", 1500.0)


def one(results, model):
    rows = results[results["model"] == model]
    assert rows["key"].nunique() == 1, model
    return rows


# ------------------------------------------------------------------------------------------------ collection

def test_collect_finds_every_evaluation_across_runs_and_depths(results):
    evals = results.drop_duplicates("key").set_index("model")
    assert sorted(results["run_id"].unique()) == ["quick", "smoke"]
    assert len(evals.loc[["gemma-3-270m"]]) == 2  # one per run
    # a hub id used as a folder name nests one level deeper: still found, named by its model
    hub = evals.loc["xlam-2-1b-fc-r"]
    assert (hub["stage"], hub["eval_id"]) == ("01_baseline_evaluation", "Salesforce/xLAM-2-1b-fc-r")
    sft, dpo = evals.loc["gemma-3-270m-sft-lora"], evals.loc["gemma-3-270m-sft-dpo"]
    assert (sft["stage"], sft["method"], sft["parent"], sft["base_model"]) == (
        "04_sft", "sft-lora", "gemma-3-270m", "gemma-3-270m")
    assert (sft["training_seconds"], dpo["training_seconds"], dpo["method"]) == (600.0, 900.0, "sft→dpo")
    assert dpo["training_seconds_total"] == 1500.0  # SFT -> DPO costs both stages
    assert math.isnan(evals.loc["xlam-2-1b-fc-r"]["training_seconds_total"])
    assert sft["params_b"] == 0.27  # from the base model's registry entry
    edge = evals.loc["gemma-3-270m-sft-lora-Q8_0"]
    assert (edge["stage"], edge["method"], edge["quantization"], edge["peak_memory_mb"]) == (
        "06_edge", "sft-lora", "Q8_0", 410.0)
    base = results[(results["model"] == "gemma-3-270m") & (results["run_id"] == "quick")].iloc[0]
    assert (base["method"], base["quantization"], base["backend"]) == ("base", "Q4_K_M", "llama_cpp")
    assert results["label"].nunique() == results["key"].nunique()  # labels stay unique across runs
    assert "gemma-3-270m-stale" not in set(results["model"])  # `.stale/` work is not a result


def test_category_rows_are_metrics_json(outputs, results):
    for evaluation in runs.find_evaluations(outputs):
        rows = results[(results["key"] == evaluation.key) & (results["kind"] == "category")].set_index("category")
        for category, m in evaluation.metrics["categories"].items():
            row = rows.loc[category]
            assert (row["n"], row["correct"]) == (m["n"], m["correct"])
            assert row["accuracy"] == pytest.approx(100 * m["accuracy"])
            low, high = aggregate.wilson_interval(m["correct"], m["n"])
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((100 * low, 100 * high))


def test_reused_folder_counts_only_the_selected_entries(outputs, results):
    (reused,) = [e for e in runs.find_evaluations(outputs) if e.eval_id == "reused"]
    assert "selected_ids" not in reused.metrics  # an older metrics.json: the selection is drawn again
    saved = [json.loads(line) for line in (reused.path / "predictions" / "simple_python.jsonl").read_text().splitlines()]
    assert len(saved) == 6
    chosen = runs.selected_predictions(reused)["simple_python"]
    assert [r["id"] for r in chosen] == [e.id for e in load_category("simple_python", 3, 0)]
    entries = runs.entries([reused])
    assert len(entries) == 6 and set(entries.groupby("category").size()) == {3}
    row = one(results, "qwen3-0.6b").set_index("category").loc["simple_python"]
    assert (row["n"], row["correct"]) == (3, reused.metrics["categories"]["simple_python"]["correct"])


def test_composites_match_aggregate_and_missing_stays_missing(outputs, results):
    base = results[(results["model"] == "gemma-3-270m") & (results["run_id"] == "quick")]
    metrics = json.loads((outputs / "quick" / "01_baseline_evaluation" / "gemma-3-270m" / "metrics.json").read_text())
    scores = base[base["kind"] == "score"].set_index(["scoring", "category"])
    for formula in ("v3", "v4"):
        for name, value in metrics["overall"][formula].items():
            got = scores.loc[(formula, name), "accuracy"]
            assert (math.isnan(got) if value is None else got == pytest.approx(100 * value)), (formula, name)
    overall = scores.loc[("v3", "overall")]
    assert overall["ci_low"] <= overall["accuracy"] <= overall["ci_high"]
    assert overall["n"] == sum(m["n"] for m in metrics["categories"].values())
    hub = one(results, "xlam-2-1b-fc-r")  # two categories only: every composite missing, not 0
    assert hub[hub["kind"] == "score"]["accuracy"].isna().all()
    assert hub[hub["kind"] == "score"]["ci_low"].isna().all()


def test_parquet_and_csv_hold_the_same_table(results, tmp_path):
    parquet, csv = runs.save_table(results, tmp_path, "results")
    back, text = pd.read_parquet(parquet), pd.read_csv(csv)
    assert len(back) == len(text) == len(results)
    assert back["accuracy"].fillna(-1).tolist() == pytest.approx(results["accuracy"].fillna(-1).tolist())
    assert set(back.columns) >= {"run_id", "stage", "model", "method", "parent", "backend", "quantization",
                                 "category", "n", "correct", "accuracy", "ci_low", "ci_high", "training_seconds"}


# ------------------------------------------------------------------------------------------------ Table IV

def test_live_weights_are_bfcl_eval_category_sizes():
    for category in LIVE_CATEGORIES:
        assert stats.V4_COUNTS[category] == category_size(category)


def test_score_weights_hand_checked():
    categories = ALL_CATEGORIES
    weights = stats.score_weights("v3", "overall", categories, stats.V4_COUNTS)
    assert weights["simple_python"] == pytest.approx(1 / 45)  # 1/3 (non-live) x 1/5 (five parts) x 1/3 (simple)
    assert weights["irrelevance"] == pytest.approx(1 / 15)
    assert weights["multi_turn_base"] == pytest.approx(1 / 12)
    assert weights["live_simple"] == pytest.approx(258 / 2251 / 3)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert stats.score_weights("v3", "overall", ["simple_python", "multiple"]) is None


def test_table_iv_columns_hand_checked():
    accuracy = {"simple_python": 0.5, "simple_java": 0.2, "simple_javascript": 0.8, "multiple": 0.6,
                "parallel": 0.4, "parallel_multiple": 0.3, "irrelevance": 0.9, "live_simple": 1.0,
                "live_multiple": 0.0, "live_parallel": 0.0, "live_parallel_multiple": 0.0, "live_irrelevance": 0.7,
                "live_relevance": 0.5, "multi_turn_base": 0.4, "multi_turn_miss_func": 0.0,
                "multi_turn_miss_param": 0.0, "multi_turn_long_context": 0.0}
    row = reference_rows.table_iv_from_accuracy(accuracy, stats.V4_COUNTS)
    assert row["non_live"] == pytest.approx(0.45)  # mean(simple 0.5, 0.6, 0.4, 0.3)
    assert row["live"] == pytest.approx((258 * 1.0 + 884 * 0.7 + 16 * 0.5) / 2251)
    assert row["multi_turn"] == pytest.approx(0.1)
    assert row["relevance"] == 0.5 and row["irrelevance"] == pytest.approx(0.8)
    assert row["overall_v3"] == pytest.approx((0.54 + (258 + 618.8 + 8) / 2251 + 0.1) / 3)
    assert row["overall_v4"] is None  # no agentic categories: missing
    agentic = {c: 0.5 for c in runs.AGENTIC}
    v4 = reference_rows.table_iv_from_accuracy(accuracy | agentic, stats.V4_COUNTS)["overall_v4"]
    assert v4 == pytest.approx(0.1 * 0.45 + 0.1 * 258 / 1351 + 0.1 * 0.8 + 0.3 * 0.1 + 0.4 * 0.5)


def test_reference_rows_reproduce_published_leaderboard_figures():
    reference = reference_rows.load_reference_rows()
    table = reference_rows.reference_table_iv(reference)
    leaderboard = reference["source"].str.contains("leaderboard")
    assert leaderboard.sum() > 25
    checked = 0
    for (_, ref), (_, row) in zip(reference[leaderboard].iterrows(), table[leaderboard.values].iterrows()):
        version = ref["bfcl_version"]
        assert row["bfcl"] == version and ref["date"] in ("2025-12-16", "2025-06-14", "2025-04-30")
        for column in ["non_live", "multi_turn", "relevance", "irrelevance", f"overall_{version}"] + (
                ["live"] if version == "v3" else []):
            assert row[column] == pytest.approx(ref[f"published_{column}"], abs=0.03), (ref["model"], column)
            checked += 1
    assert checked > 150
    xlam = table[(table["label"] == "xLAM-2-3b-fc-r (FC)") & (table["bfcl"] == "v3")].iloc[0]
    assert (round(xlam["overall_v3"], 2), round(xlam["multi_turn"], 2)) == (64.81, 56.25)


def test_reference_rows_carry_source_date_and_version():
    reference = reference_rows.load_reference_rows()
    assert reference[["source", "source_url", "date", "bfcl_version"]].notna().all().all()
    assert set(reference["bfcl_version"]) == {"v3", "v4", "not stated"}
    names = " ".join(reference["model"])
    for model in ["xLAM-2-1b-fc-r", "xLAM-2-3b-fc-r", "Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Hammer2.1",
                  "Gemma-3-1b-it", "Llama-3.2-1B", "Llama-3.2-3B", "FunctionGemma"]:
        assert model in names, model
    table = reference_rows.reference_table_iv(reference).set_index("label")
    paper = table.loc["TinyLLM paper, best (hybrid optimization)"]
    assert (paper["overall_v3"], paper["multi_turn"], paper["bfcl"]) == (65.74, 55.62, "v3")
    assert math.isnan(paper["non_live"])  # not published: missing, not 0
    card = table.loc["FunctionGemma-270M-it"]
    assert card["bfcl"] == "not stated" and (card["relevance"], card["irrelevance"]) == (61.1, 73.7)
    assert card["non_live"] == pytest.approx((61.6 + 63.5 + 39.0 + 29.5) / 4) and math.isnan(card["multi_turn"])


def test_committed_reference_rows_equal_a_fresh_build():
    committed, fresh = reference_rows.load_reference_rows(), reference_rows.build_reference_rows()
    pd.testing.assert_frame_equal(committed, fresh.astype(committed.dtypes.to_dict()), check_dtype=False)


def test_table_iv_shows_missing_components_as_missing(results):
    table = reference_rows.table_iv(results)
    ours = table[table["row"] == "ours"]
    hub = ours[ours["model"] == "xlam-2-1b-fc-r"].iloc[0]
    assert all(math.isnan(hub[c]) for c in reference_rows.TABLE_IV)
    sft = ours[(ours["model"] == "gemma-3-270m-sft-lora") & (ours["source"] == "quick/04_sft")].iloc[0]
    assert not math.isnan(sft["overall_v3"]) and math.isnan(sft["overall_v4"])  # no agentic categories in v4 data
    markdown = reference_rows.table_iv_markdown(table)
    hub_line = next(line for line in markdown.splitlines() if "xlam-2-1b-fc-r" in line)
    assert hub_line.count("–") == len(reference_rows.TABLE_IV) and " 0.00 " not in hub_line
    assert (table["row"] == "reference").sum() == len(reference_rows.load_reference_rows())


# ------------------------------------------------------------------------------------------------ statistics

def test_a_composite_interval_keeps_the_uncertainty_of_a_category_answered_all_wrong():
    """0 of 3 is not a certain 0 %: a bootstrap over entries gave such a composite a zero-width interval."""
    samples = {"multi_turn_base": np.zeros(3), "simple_python": np.ones(25), "multiple": np.r_[np.ones(3), np.zeros(7)]}
    assert stats.composite_accuracy_interval(samples, {"multiple": 1.0}) == pytest.approx(
        aggregate.wilson_interval(3, 10))  # one category: its Wilson interval
    low, high = stats.composite_accuracy_interval(samples, {"multi_turn_base": 0.5, "simple_python": 0.5})
    mt, sp = aggregate.wilson_interval(0, 3), aggregate.wilson_interval(25, 25)
    assert low == pytest.approx(0.5 - 0.5 * (1 - sp[0])) and high == pytest.approx(0.5 + 0.5 * mt[1])  # hand-checked
    low, high = stats.composite_accuracy_interval(samples, {"multi_turn_base": 0.25, "multiple": 0.75})
    assert low < 0.75 * 0.3 < high


def test_training_seconds_are_unknown_not_partial_when_a_trained_parent_has_no_evaluation(tmp_path):
    root = load_tree_builder().build(tmp_path / "outputs")
    sft_eval = root / "quick" / "04_sft" / "sft-lora" / "eval"
    sft_eval.rename(root / "quick" / "04_sft" / "sft-lora" / ".eval-gone")  # e.g. moved aside with .stale
    evals = runs.collect(root, n_resamples=50).drop_duplicates("key").set_index("model")
    dpo = evals.loc["gemma-3-270m-sft-dpo"]
    assert dpo["training_seconds"] == 900.0 and pd.isna(dpo["training_seconds_total"])  # not 900 alone
    # evaluated, but its training.json lost: unknown too
    sft_eval_back = root / "quick" / "04_sft" / "sft-lora" / ".eval-gone"
    sft_eval_back.rename(sft_eval)
    (root / "quick" / "04_sft" / "sft-lora" / "training.json").unlink()
    evals = runs.collect(root, n_resamples=50).drop_duplicates("key").set_index("model")
    assert pd.isna(evals.loc["gemma-3-270m-sft-dpo", "training_seconds_total"])


def test_training_json_is_looked_for_in_the_stage_only(tmp_path):
    """A training.json above the run (or the stage) belongs to something else: never to a base evaluation."""
    root = load_tree_builder().build(tmp_path / "outputs")
    (root / "quick" / "training.json").write_text(json.dumps({"seconds": 7.0}))
    (root / "training.json").write_text(json.dumps({"seconds": 7.0}))
    for where in (root, root / "quick"):
        base = [e for e in runs.find_evaluations(where) if e.key.endswith("01_baseline_evaluation/gemma-3-270m")
                and e.run_id == "quick"]
        assert len(base) == 1 and base[0].training_seconds is None


def test_labels_stay_unique_for_two_evaluations_of_one_model_in_one_stage(tmp_path):
    root = load_tree_builder().build(tmp_path / "outputs")
    first = root / "quick" / "04_sft" / "sft-lora" / "eval" / "gemma-3-270m-sft-lora"
    shutil.copytree(first, first.parent / "again")
    results = runs.collect(root, n_resamples=50)
    assert results["label"].nunique() == results["key"].nunique()


def test_mcnemar_exact_known_answers():
    a, b = np.zeros(20), np.r_[np.ones(10), np.zeros(10)]
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 * 0.5 ** 10)  # 10 discordant, all one way
    a = np.array([0, 0, 0, 1, 1, 1]); b = np.array([1, 1, 1, 0, 1, 1])  # 3 vs 1 discordant
    assert stats.mcnemar_exact(a, b) == pytest.approx(0.625)  # 2 * P(X <= 1), X ~ Bin(4, 1/2)
    result = stats.paired_difference({"c": np.zeros(20)}, {"c": np.r_[np.ones(10), np.zeros(10)]}, {"c": 1.0},
                                        n_resamples=1000)
    assert result["diff"] == 50 and result["test"] == "McNemar exact"
    assert 20 <= result["ci_low"] < 50 < result["ci_high"] <= 75


def test_paired_composite_permutation_test():
    rng = np.random.default_rng(0)
    a = {c: rng.integers(0, 2, 30) for c in ("x", "y")}
    same = stats.paired_difference(a, a, {"x": 0.5, "y": 0.5}, n_resamples=500)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    better = {c: np.ones(30, int) for c in ("x", "y")}
    result = stats.paired_difference(a, better, {"x": 0.25, "y": 0.75}, n_resamples=500)
    expected = 100 * (0.25 * (1 - a["x"].mean()) + 0.75 * (1 - a["y"].mean()))
    assert result["diff"] == pytest.approx(expected) and result["test"] == "paired permutation"
    assert result["p_value"] < 0.001 and result["ci_low"] > 0


def test_holm_correction():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_comparisons_pair_methods_on_shared_entries(outputs, results):
    entries = runs.entries(runs.find_evaluations(outputs))
    pairs = findings.default_pairs(results)
    keys = results.drop_duplicates("model").set_index("model")["key"]
    base = "quick/01_baseline_evaluation/gemma-3-270m"
    assert (base, keys["gemma-3-270m-sft-lora"]) in pairs
    assert (keys["gemma-3-270m-sft-lora"], keys["gemma-3-270m-sft-dpo"]) in pairs  # the parent named in run.json
    assert (keys["gemma-3-270m-sft-lora-F16"], keys["gemma-3-270m-sft-lora-Q8_0"]) in pairs  # edge: vs its F16
    assert not any(b == base for _, b in pairs)  # a base model is never the derived side
    # the same file evaluated again (stage 08's F16 is stage 06's export) is not a second derived model
    again = results.copy()
    f16 = again["key"] == keys["gemma-3-270m-sft-lora-F16"]
    again.loc[f16, ["parent", "base_model"]] = "gemma-3-270m"  # as stage 08 copies the evaluated model's spec
    assert (base, keys["gemma-3-270m-sft-lora-F16"]) in findings.default_pairs(again)
    again.loc[f16, "checkpoint"] = again.loc[again["key"] == keys["gemma-3-270m-sft-lora"], "checkpoint"].iloc[0]
    deduplicated = findings.default_pairs(again)
    assert (base, keys["gemma-3-270m-sft-lora"]) in deduplicated
    assert (keys["gemma-3-270m-sft-lora-F16"], keys["gemma-3-270m-sft-lora-Q8_0"]) in deduplicated
    assert not any(b == keys["gemma-3-270m-sft-lora-F16"] for _, b in deduplicated)
    table = findings.compare(entries, pairs, n_resamples=300)
    row = table[(table["a_key"] == base) & (table["b_key"] == keys["gemma-3-270m-sft-lora"])
                & (table["comparison"] == "simple_python")].iloc[0]
    a = entries[(entries["key"] == base) & (entries["category"] == "simple_python")].set_index("id")["correct"]
    b = entries[(entries["key"] == keys["gemma-3-270m-sft-lora"]) & (entries["category"] == "simple_python")]
    b = b.set_index("id")["correct"].reindex(a.index)
    assert row["n"] == len(a) and row["diff"] == pytest.approx(100 * (b.mean() - a.mean()))
    assert row["p_value"] == pytest.approx(stats.mcnemar_exact(a.to_numpy(), b.to_numpy()))
    assert (table["p_holm"] >= table["p_value"] - 1e-12).all() and table["family_size"].iloc[0] == len(table)
    overall = table[(table["comparison"] == "overall_v3") & (table["a_key"] == base)]
    assert len(overall) >= 2 and (overall["test"] == "paired permutation").all()


def test_findings_are_written_from_the_tables(outputs, results):
    entries = runs.entries(runs.find_evaluations(outputs))
    comparisons = findings.compare(entries, results=results, n_resamples=300)
    text = findings.findings_markdown(results, comparisons, entries)
    sft = one(results, "gemma-3-270m-sft-lora")
    overall = sft[(sft["scoring"] == "v3") & (sft["category"] == "overall")].iloc[0]
    assert f"BFCL v3 overall: {overall['accuracy']:.2f} %" in text
    assert f"Holm-adjusted over all {len(comparisons)} comparisons" in text
    first = comparisons.sort_values(["p_holm", "comparison"]).iloc[0]
    assert findings.comparison_sentence(first) in text
    assert f"{abs(first['diff']):.1f} points" in text
    hub = findings.evaluation_summary(results, one(results, "xlam-2-1b-fc-r")["key"].iloc[0], entries)
    assert "BFCL v3 overall: missing" in hub


def test_analyze_writes_every_table(outputs, tmp_path):
    done = analysis.analyze(outputs / "quick", tmp_path, analysis.AnalysisConfig(n_resamples=200))
    for name in ("results.parquet", "results.csv", "entries.parquet", "table_iv.csv", "table_iv.md",
                 "comparisons.csv", "findings.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert set(done["results"]["run_id"]) == {"quick"}


def test_decoding_rows_and_matched_sft_get_their_own_comparisons(results):
    keys = results.drop_duplicates("model").set_index("model")["key"]
    sft, dpo = keys["gemma-3-270m-sft-lora"], keys["gemma-3-270m-sft-dpo"]
    extra = results[results["key"].isin([sft, dpo])].copy()
    decline = extra[extra["key"] == sft].assign(key=sft + "-decline", decoding="decline")
    matched_method = findings.MATCHED_PREFIX + extra.loc[extra["key"] == dpo, "method"].iloc[0]
    matched = extra[extra["key"] == sft].assign(key=sft + "-matched", method=matched_method, checkpoint="elsewhere")
    table = pd.concat([results.assign(decoding="free"), decline, matched.assign(decoding="free")])
    pairs = findings.default_pairs(table)
    assert (sft, sft + "-decline") in pairs  # the decoding option against the same weights, decoded freely
    assert [p for p in pairs if p[1] == sft + "-decline"] == [(sft, sft + "-decline")]  # and nothing else
    assert (sft + "-matched", dpo) in pairs  # the hybrid against SFT at its compute
