# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Baseline evaluation on BFCL
#
# **What this does.** Evaluates each model as-is (no fine-tuning) on the Berkeley Function Calling Leaderboard
# (BFCL v4 data from the pinned `bfcl-eval` package): single-turn AST categories (simple, multiple, parallel,
# parallel-multiple; Python, Java, JavaScript), relevance / irrelevance detection, live user-contributed
# questions, and multi-turn conversations run against BFCL's simulated APIs. Scores come only from bfcl-eval's
# official checkers applied to the raw model output saved on disk.
#
# **How to run.** As part of the pipeline (`python -m tinyllm_utils.pipeline --profile quick`, which injects the
# parameters below with papermill and saves the executed copy under `outputs/<run_id>/01_baseline_evaluation/`),
# or on its own in Jupyter: the defaults are the smallest (smoke) workload on the embedded gemma-3-270m. The
# parameters are the fields of `tinyllm_utils.stages.baseline.BaselineConfig`, whose defaults these are.
#
# Everything here is a call into `tinyllm_utils`; the notebook only tells the story.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = BaselineConfig's defaults)
categories = ["simple_python", "simple_java", "multiple", "parallel", "parallel_multiple", "irrelevance",
              "live_simple", "live_irrelevance", "live_relevance", "multi_turn_base"]
limit = 2  # single-turn entries per category (seeded sample), None for the whole category
multi_turn_limit = 1  # multi-turn entries per category
seed = 0
backend = "llama_cpp"  # or "transformers"
max_new_tokens = 256
batch_size = 8  # prompts per batch on the transformers backend
parallel = 1  # llama_cpp: answers decoded together, one decode call per token for all; 1: one at a time
decline_bias = None  # llama_cpp: logit bias on the no-call answer's first token (a calibrated decision); None: off
stop_when_hopeless = True  # Python categories: stop once the text can no longer become a call list
grammar = False  # Python categories (llama_cpp): only a call list of the offered functions, or prose
models = ["gemma-3-270m"]
require_revision = False  # the paper profile: hub models only at a pinned commit
stage_dir = "outputs/smoke/01_baseline_evaluation"

# %%
import pandas as pd
from IPython.display import Markdown, display

from tinyllm_utils.analysis import baseline_views
from tinyllm_utils.bfcl import aggregate
from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.models.registry import ModelUnavailableError
from tinyllm_utils.stages.baseline import BaselineConfig, run_baseline

stage_dir = resolve_stage_dir(stage_dir)  # `outputs/...` lands in the outputs folder, wherever Jupyter runs
config = config_from_parameters(BaselineConfig, globals())
pd.set_option("display.precision", 1)

# %% [markdown]
# ## Generate and score
#
# One output folder per model: `predictions/<category>.jsonl` (raw text, decoded calls, validity, BFCL error
# kind), `metrics.json`, `run.json` (parameters, seed, versions, git commit, hardware). Entries already on disk
# are skipped, so an interrupted run picks up where it stopped.
#
# Decoding is greedy with a cap of `max_new_tokens`. A base model rarely ends its turn; for Python categories
# generation also stops once the text can no longer become a call list (the score is then already decided),
# which is what makes full categories affordable on two CPU cores.
#
# The cell prints each category's progress (as it ended) and a table per model. llama.cpp's one line
# `llama_kv_cache_iswa: using full-size SWA cache` is informational: Gemma 3's sliding-window layers get a full-size
# cache (correct results, a little more memory).

# %%
try:
    all_metrics = run_baseline(config, stage_dir)
except ModelUnavailableError as exc:
    raise SystemExit(f"{type(exc).__name__}: {exc}") from None  # one clear message instead of a traceback
for model, model_metrics in all_metrics.items():
    print(model)
    print(aggregate.format_table(model_metrics))

# %% [markdown]
# ## Accuracy per category
#
# Accuracy in %, with the number of entries scored (`n`, out of `category_size`) and a 95 % Wilson interval:
# with a sample of 25 entries a 0 % score still allows up to ~13 %, so read small samples with their interval.

# %%
metrics = baseline_views.metrics_table(stage_dir)
display(metrics.pivot_table(index=["group", "category"], columns="model", values=["accuracy", "n"]))
display(baseline_views.overall_table(stage_dir).pivot_table(index=["bfcl", "score"], columns="model", values="value"))

# %%
fig = baseline_views.plot_category_accuracy(metrics)
fig

# %% [markdown]
# ## Failure modes
#
# What went wrong, from bfcl's error kinds: **no call** (prose, or an empty answer), **unparseable**
# (call-like text that does not decode, or holds non-literal expressions, which are never evaluated),
# **wrong function** (wrong name or number of calls; any call on an irrelevance question), **wrong arguments**
# (missing, unexpected, mistyped or wrong values), **wrong execution** (multi-turn: API state or responses differ
# from the ground truth's).

# %%
failures = baseline_views.failure_mode_table(stage_dir)
display(failures)
fig = baseline_views.plot_failure_modes(failures)
fig

# %% [markdown]
# ## Reading the baseline
#
# Written from the numbers above (not typed in advance), so it stays true under any profile or model; compare
# with the published leaderboard rows in the analysis stage (08).

# %%
display(Markdown(baseline_views.baseline_findings(metrics, failures)))

# %% [markdown]
# ## Checks on what was saved
#
# Every selected entry has its raw output on disk, and each category's `n` counts exactly those entries.

# %%
from tinyllm_utils.core.results import model_folder_name, read_jsonl

for model, model_metrics in all_metrics.items():
    for category, selected in model_metrics["selected_ids"].items():
        saved = {row["id"] for row in read_jsonl(stage_dir / model_folder_name(model) / "predictions" / f"{category}.jsonl")}
        assert set(selected) <= saved, (model, category)
        assert model_metrics["categories"][category]["n"] == len(selected), (model, category)
