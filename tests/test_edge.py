"""The edge stage's library: llama.cpp quantization round trip, the device profile's fields, paired retention,
Pareto front, recommendation and figure from saved results.

The quantization test re-quantizes the embedded gemma-3-270m Q4_K_M (allow_requantize) into two small types;
the profile test runs one tiny profile in a subprocess. Both take seconds on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tinyllm_utils.analysis import edge_views
from tinyllm_utils.analysis import stats as edge_stats
from tinyllm_utils.edge import profile, quantize
from tinyllm_utils.edge import table as edge_tables
from tinyllm_utils.models.registry import resolve_model

GGUF = resolve_model("gemma-3-270m").gguf_path()


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    return out, quantize.quantize_variants(GGUF, out, ["Q8_0", "Q4_0"], allow_requantize=True, nthread=2)


@pytest.mark.slow
def test_quantize_round_trip(variants):
    out, paths = variants
    # One quantization per name: the source's own suffix (q4_k_m) is replaced, not kept.
    assert [p.name for p in paths] == ["gemma-3-270m-Q8_0.gguf", "gemma-3-270m-Q4_0.gguf"]
    # Each file declares the type asked for (gguf metadata), and Q8_0 is larger than Q4_0.
    assert [quantize.gguf_file_type(p) for p in paths] == ["Q8_0", "Q4_0"]
    assert paths[0].stat().st_size > paths[1].stat().st_size
    manifest = json.loads((out / "variants.json").read_text())
    assert [v["quantization"] for v in manifest["variants"]] == ["Q8_0", "Q4_0"]
    assert all(v["source_type"] == "Q4_K_M" and v["requantized"] for v in manifest["variants"])
    assert all(v["check_output"] for v in manifest["variants"])  # each loaded and generated text
    assert not list(out.glob("*.partial"))


@pytest.mark.slow
def test_quantize_resumes_and_refuses_quantized_input_without_permission(variants, tmp_path):
    out, paths = variants
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = quantize.quantize_variants(GGUF, out, ["Q8_0", "Q4_0"], allow_requantize=True, check=False)
    assert again == paths and [p.stat().st_mtime_ns for p in paths] == mtimes
    assert all(v["quantize_s"] is None for v in json.loads((out / "variants.json").read_text())["variants"])
    with pytest.raises(ValueError, match="already quantized.*allow_requantize"):
        quantize.quantize_variants(GGUF, tmp_path, ["Q4_0"], check=False)
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize.quantize_variants(GGUF, tmp_path, ["Q3_X"], check=False)


@pytest.mark.slow
def test_profile_returns_every_field(variants):
    _, paths = variants
    prompts = {"short": "<start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\n"}
    prefix = [f"<start_of_turn>user\nYou are a helpful assistant. Question {i}: what is {i} + 1?"
              "<end_of_turn>\n<start_of_turn>model\n" for i in range(3)]
    result = profile.profile_variant(paths[1], prompts, threads=1, runs=2, decode_tokens=4, max_new_tokens=4,
                                  n_ctx=512, prefix_prompts=prefix, timeout_s=300)
    assert result["quantization"] == "Q4_0" and result["threads"] == 1 and result["n_threads_batch"] == 1
    assert result["file_size_mb"] == pytest.approx(paths[1].stat().st_size / 2**20, abs=0.01)
    assert result["load_s"]["runs"] == 2 and result["load_s"]["median"] > 0
    assert result["peak_rss_mb"] > result["baseline_rss_mb"] > 0
    fields = result["prompts"]["short"]
    assert set(fields) == {"prompt_tokens", "ttft_s", "prompt_tokens_per_s", "decode_tokens_per_s", "e2e_s",
                           "completion_tokens"}
    for name, stats in fields.items():
        assert set(stats) == {"median", "min", "max", "runs"} and stats["runs"] == 2
        assert 0 < stats["min"] <= stats["median"] <= stats["max"], name
    reuse = result["prefix_reuse"]
    assert reuse["entries"] == 3 and reuse["shared_prefix_tokens"] > 5
    assert reuse["cold_s_per_entry"]["median"] > 0 and reuse["reuse_s_per_entry"]["median"] > 0
    assert result["machine"]["cpu_count"] >= 1 and result["runtime"] == "llama.cpp"


@pytest.mark.slow
def test_profile_decodes_end_to_end_under_the_evaluations_grammar(variants, tmp_path):
    _, paths = variants
    prompts = {"short": "<start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\n"}
    prefix = [prompts["short"]] * 2
    only_empty_list = 'root ::= "[]"'  # nothing else can be decoded: e2e stops after "[]" and end of turn
    result = profile.profile_variant(paths[1], prompts, threads=1, runs=1, decode_tokens=4, max_new_tokens=32,
                                  n_ctx=512, prefix_prompts=prefix, timeout_s=300,
                                  grammars={"short": only_empty_list}, prefix_grammars=[only_empty_list] * 2)
    assert result["decoding"] == profile.profile_decoding(True, True) and result["decoding"]["grammar"]
    assert result["prompts"]["short"]["completion_tokens"]["max"] <= 2
    with pytest.raises(ValueError, match="both or neither"):
        profile.profile_variant(paths[1], prompts, grammars={"short": only_empty_list}, prefix_grammars=None)
    with pytest.raises(ValueError, match="one per prompt kind"):
        profile.profile_variant(paths[1], prompts, prefix_prompts=prefix, grammars={"other": only_empty_list},
                             prefix_grammars=[only_empty_list] * 2)
    # A profile saved before decoding was recorded (early stop, no grammar) is not reused for a grammar run.
    old = tmp_path / "Q4_0-t1.json"
    old.write_text(json.dumps({"prompts": {}}))
    assert profile.saved_decoding(old) == profile.profile_decoding(True, False) != profile.profile_decoding(True, True)


def test_representative_grammars_are_the_evaluations():
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.bfcl.grammar import call_list_grammar

    grammars = profile.representative_grammars()
    assert set(grammars) == set(profile.representative_prompts())
    prefix = load_category("simple_python", 4, 0)
    assert profile.shared_prefix_grammars(4, 0) == [call_list_grammar(e.entry["function"]) for e in prefix]


def _rows(valid: list[bool], category: str = "simple_python") -> list[dict]:
    return [{"id": f"{category}_{i}", "category": category, "valid": v} for i, v in enumerate(valid)]


def test_paired_retention():
    from scipy.stats import binomtest

    reference = _rows([True] * 8 + [False] * 2)
    variant = _rows([True] * 5 + [False] * 3 + [True, False])  # loses 3 entries, gains 1
    result = edge_tables.paired_retention(reference, variant + _rows([True], "multiple"))  # unpaired row ignored
    assert result["n"] == 10 and result["reference_accuracy"] == 0.8 and result["accuracy"] == 0.6
    assert result["retained"] == pytest.approx(0.75)
    assert (result["only_reference_correct"], result["only_variant_correct"]) == (3, 1)
    assert result["mcnemar_p"] == pytest.approx(binomtest(1, 4).pvalue)
    low, high = result["retained_ci95"]
    assert low < 0.75 < high
    same = edge_tables.paired_retention(reference, reference)
    assert same["retained"] == 1.0 and same["retained_ci95"] == [1.0, 1.0] and same["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="no entries in common"):
        edge_tables.paired_retention(reference, _rows([True], "multiple"))


def _table() -> pd.DataFrame:
    return pd.DataFrame([
        {"method": "sft", "quantization": "F16", "size_mb": 500, "decode_ms_per_token": 20, "peak_rss_mb": 700,
         "accuracy": 0.60, "retained": 1.0, "runtime": "llama.cpp", "threads": 2},
        {"method": "sft", "quantization": "Q8_0", "size_mb": 280, "decode_ms_per_token": 12, "peak_rss_mb": 450,
         "accuracy": 0.60, "retained": 1.0, "runtime": "llama.cpp", "threads": 2},
        {"method": "sft", "quantization": "Q4_K_M", "size_mb": 230, "decode_ms_per_token": 10, "peak_rss_mb": 400,
         "accuracy": 0.58, "retained": 0.9667, "runtime": "llama.cpp", "threads": 2},
        {"method": "sft", "quantization": "Q4_0", "size_mb": 220, "decode_ms_per_token": 11, "peak_rss_mb": 400,
         "accuracy": 0.40, "retained": 0.6667, "runtime": "llama.cpp", "threads": 2},
    ])


def test_pareto_front_and_recommendation():
    table = edge_stats.mark_pareto(_table())
    # F16 is dominated by Q8_0 (same accuracy, faster, smaller); Q4_0 by Q4_K_M (better on every axis).
    assert table.set_index("quantization")["pareto"].to_dict() == {"F16": False, "Q8_0": True, "Q4_K_M": True,
                                                                    "Q4_0": False}
    chosen = edge_tables.recommend(table)
    assert chosen.loc[0, "quantization"] == "Q4_K_M"  # smallest keeping >= 95 %; Q4_0 is smaller but keeps 67 %
    assert edge_tables.recommend(table, keep=0.99).loc[0, "quantization"] == "Q8_0"
    assert edge_tables.recommend(table, keep=1.01).loc[0, "quantization"] is None


def test_edge_table_from_saved_results_and_figure(tmp_path):
    records = []
    for quant, valid in (("F16", [True] * 8 + [False] * 2), ("Q4_K_M", [True] * 7 + [False] * 3)):
        eval_dir = tmp_path / "eval" / quant
        (eval_dir / "predictions").mkdir(parents=True)
        (eval_dir / "predictions" / "simple_python.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _rows(valid)))
        profile = {"runtime": "llama.cpp", "threads": 2, "file_size_mb": 500 if quant == "F16" else 230,
                   "peak_rss_mb": 700 if quant == "F16" else 400, "load_s": {"median": 0.5},
                   "prompts": {k: {"decode_tokens_per_s": {"median": 50 if quant == "F16" else 90},
                                   "e2e_s": {"median": 2.0}, "ttft_s": {"median": 0.3}} for k in ("a", "b")}}
        (tmp_path / f"{quant}.json").write_text(json.dumps(profile))
        records.append({"method": "base", "quantization": quant, "eval_dir": eval_dir,
                        "profile": tmp_path / f"{quant}.json"})
    table = edge_tables.edge_table(records)
    row = table.set_index("quantization").loc["Q4_K_M"]
    assert row["accuracy"] == 0.7 and row["retained"] == pytest.approx(0.875) and row["n_paired"] == 10
    assert row["decode_ms_per_token"] == pytest.approx(1000 / 90) and row["size_mb"] == 230
    outputs = edge_tables.write_edge_outputs(table, tmp_path / "out", keep=0.85)
    assert outputs["recommendation"].loc[0, "quantization"] == "Q4_K_M"
    assert all(p.stat().st_size > 1000 for p in outputs["figures"])
    saved = pd.read_csv(tmp_path / "out" / "edge_table.csv")
    assert {"method", "quantization", "pareto", "retained_ci_low", "retained_ci_high"} <= set(saved.columns)
    title = edge_views.plot_edge_pareto(outputs["table"]).axes[0].get_title()
    assert "at 2 threads" in title and "n = 10 entries" in title  # what was measured, on how many entries
    again = edge_tables.write_edge_outputs(table, tmp_path / "again", keep=0.85)
    assert again["figures"][1].read_bytes() == outputs["figures"][1].read_bytes()  # PDF: no creation date


def test_a_variant_that_stops_calling_does_not_keep_its_accuracy(tmp_path):
    """Pooled with irrelevance (where no call is right), a variant that never calls would look as good as F16."""
    records = []
    for quant, calls, abstains in (("F16", [True] * 4 + [False] * 6, [False] * 10), ("Q4_K_M", [False] * 10, [True] * 10)):
        eval_dir = tmp_path / quant
        (eval_dir / "predictions").mkdir(parents=True)
        for category, valid in (("simple_python", calls), ("irrelevance", abstains)):
            (eval_dir / "predictions" / f"{category}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in _rows(valid, category)))
        records.append({"method": "sft", "quantization": quant, "eval_dir": eval_dir})
    row = edge_tables.edge_table(records).set_index("quantization").loc["Q4_K_M"]
    assert row["accuracy_all_entries"] == 0.5 and row["irrelevance_accuracy"] == 1.0  # pooled: 0.5 vs F16's 0.2
    assert row["accuracy"] == 0.0 and row["retained"] == 0.0 and row["n"] == 10  # on the entries that expect a call


def test_outputs_from_partial_results(tmp_path):
    """Before any profile exists (accuracy only), the table, an empty front and 'no recommendation' still come out."""
    eval_dir = tmp_path / "eval" / "F16"
    (eval_dir / "predictions").mkdir(parents=True)
    (eval_dir / "predictions" / "simple_python.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _rows([True, False])))
    # Rows outside the evaluation's selection (an earlier run with other categories) do not count.
    (eval_dir / "predictions" / "multiple.jsonl").write_text(json.dumps(_rows([True], "multiple")[0]) + "\n")
    (eval_dir / "metrics.json").write_text(json.dumps({"selected_ids": {"simple_python": ["simple_python_0",
                                                                                         "simple_python_1"]}}))
    table = edge_tables.edge_table([{"method": "base", "quantization": "F16", "eval_dir": eval_dir}])
    assert table.loc[0, "n"] == 2
    outputs = edge_tables.write_edge_outputs(table, tmp_path / "out")
    assert outputs["table"].loc[0, "accuracy"] == 0.5 and not outputs["table"]["pareto"].any()
    assert outputs["recommendation"].loc[0, "quantization"] is None


@pytest.mark.slow
def test_a_profile_process_reports_its_own_peak_memory_not_its_parents():
    # getrusage's ru_maxrss in a fork + exec'd child starts at the parent's resident size: 08 once reported
    # the notebook kernel's 1.8 GB as the peak of every variant
    ballast = np.ones(2**30 // 8)  # 1 GiB resident in this process when the child is started
    code = "from tinyllm_utils.core.results import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    del ballast
    assert 0 < float(child.stdout) < 256  # an interpreter and one small module
