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
# # 03 · Verified preference pairs for DPO
#
# **What this does.** Turns the filtered stage-02 dataset into `(prompt, chosen, rejected)` pairs for DPO:
#
# * **chosen** is the reference answer written as the call list the evaluation expects (`[f(a=1), g(b='x')]`, or
#   a short sentence saying no function fits on irrelevance rows). It is kept only when bfcl-eval's official
#   checker accepts it.
# * **rejected** is first what a weaker model (the *rejecter*) really writes for the same prompt: greedy
#   decoding, no early stop. Its answer is kept only when the checker says it is wrong.
# * When the rejecter writes nothing usable (an empty answer, the chosen text itself, or a correct answer),
#   seeded **synthetic negatives** take its place: wrong function, missing required argument, wrong value or
#   type, an extra call, or a call on an irrelevance prompt. The checker confirms each one is wrong too.
#
# The TinyLLM paper took TinyLlama-1.1B outputs as rejected answers and checked them by hand. Here bfcl's
# checker verifies every pair, chosen and rejected alike. A stratified review sample goes out as a CSV, and the
# verdicts in it come back in through `review_csv`: pairs the reviewer disputes are dropped.
#
# Prompts are in exactly the evaluation prompt format of `model` (the DPO policy), so training sees what
# evaluation will feed the model. Model text is only ever decoded as literals, never run.
#
# **How to run.** After stage 02, as part of the pipeline
# (`python -m tinyllm_utils.pipeline --profile quick --stages 03_pair_construction`, which injects the parameters
# below with papermill), or on its own in Jupyter: the defaults are the smallest (smoke) workload on the embedded
# gemma-3-270m. The whole method is one call, `pair_construction.run_stage`; the cells after it show what each step made.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = PairConfig's defaults)
# model: the DPO policy, whose prompt format the pairs are written in
model = "gemma-3-270m"
# rejecter: the weaker model whose own wrong answers become `rejected`
rejecter = "gemma-3-270m"
backend = "llama_cpp"  # or "transformers"
rejecter_max_new_tokens = 64
batch_size = 8  # prompts per batch on the transformers backend
limit = 6  # rows per split (seeded, every category in turn), None for all of them
negatives_per_row = 1  # synthetic negatives for a row whose rejecter answer is unusable
# synthetic_ratio: share of rows with a usable rejecter answer that also get synthetic negatives
synthetic_ratio = 0.5
synthetic_kinds = ["wrong_function", "missing_required", "wrong_value", "extra_call", "call_on_irrelevance"]
review_per_kind = 5  # pairs per rejection kind in the review sample
# review_csv: a filled-in review sample (verdict column ok or bad), None before any review
review_csv = None
seed = 0
stage_dir = "outputs/smoke/03_pair_construction"

# %%
import pandas as pd
from IPython.display import display

from tinyllm_utils.analysis import data_views
from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.data import pairs
from tinyllm_utils.models.registry import ModelUnavailableError
from tinyllm_utils.stages import pair_construction
from tinyllm_utils.train.progress import quiet_notebook_output

stage_dir = resolve_stage_dir(stage_dir)  # `outputs/...` lands in the outputs folder, wherever Jupyter runs
quiet_notebook_output()  # no library widget bars (saved frozen at 0 %); known, harmless warnings filtered
config = config_from_parameters(pair_construction.PairConfig, globals())
pd.set_option("display.max_colwidth", 80)
config

# %% [markdown]
# ## Method
#
# 1. **Input.** The filtered, deduplicated train/validation rows that stage 02 wrote next to this stage
#    (`<run>/02_data_filtering/dataset`): the request (`messages`), the functions on offer and the reference calls.
# 2. **Rows.** A seeded sample of `limit` rows per split that takes the categories in turn (all rows when `limit`
#    is None).
# 3. **Chosen.** Each reference answer is rendered as call text and scored by bfcl's checker exactly like a model
#    answer; a reference the checker refuses cannot be a chosen answer, so its row is listed and left out.
# 4. **Rejected.** The rejecter answers every kept row in its own prompt format, greedily and without stopping
#    early, up to `rejecter_max_new_tokens`. Each answer is appended to a JSONL cache under `generations/` as soon
#    as it is written, keyed by the prompt's content and the decoding settings, so an interrupted run only
#    generates the rows still missing.
# 5. **Pairs.** The rejecter's answer becomes a pair when the checker says it is wrong (kind `model_generation`);
#    otherwise `negatives_per_row` synthetic negatives take its place, and a share `synthetic_ratio` of the rows
#    with a usable answer get synthetic negatives as well. Every pair is then scored again from scratch: chosen
#    must pass and rejected must fail, with no exception.
# 6. **Review.** A seeded sample of up to `review_per_kind` pairs of each kind goes to `review_sample.csv` with
#    empty `verdict` and `note` columns. Fill in the verdict (`ok` / `bad`; blank means not reviewed) and pass
#    a filled copy back as `review_csv`, kept outside the stage's folder (e.g. `outputs/<run>/review.csv`: a
#    new review reruns this stage, its content being part of the stage's key, and the rerun first moves the
#    folder aside): disputed pairs are dropped and the agreement rate is reported.
# 7. **Save.** TRL's standard preference format: `prompt` is exactly what evaluation feeds `model`; `chosen` /
#    `rejected` are completions ending with its end-of-turn marker, plus pair id, category, kind, checker error.
#
# The cell below prints the rejecter's progress (as it ended) and one summary line; llama.cpp's
# `llama_kv_cache_iswa: using full-size SWA cache` is informational (Gemma 3's sliding-window layers get a
# full-size cache).

# %%
try:
    result = pair_construction.run_stage(config, stage_dir)
except (pairs.MissingInputError, ModelUnavailableError) as exc:
    raise SystemExit(f"{type(exc).__name__}: {exc}") from None  # one clear message instead of a traceback
card = result["card"]
print(f"{card['rows']} rows, {card['chosen_verified']} chosen answers accepted by the checker, "
      f"{card['pairs']} pairs kept")

# %% [markdown]
# ## Input and chosen answers
#
# Rows per category and split in the stage-02 dataset, and any reference answer the checker refused.

# %%
display(pd.DataFrame({split: data.to_pandas()["category"].value_counts() for split, data in
                      result["dataset"].items()}).fillna(0).astype(int))
display(pd.DataFrame(result["chosen_failures"]) if result["chosen_failures"] else "No reference answer failed.")

# %% [markdown]
# ## What the weaker model wrote
#
# Per category: answers `used` as rejected (the checker says wrong), `empty`, `same_as_chosen`, or `correct`
# (right, though perhaps written differently). Only `used` answers become `model_generation` pairs.

# %%
display(pairs.outcome_table(result["outcomes"]))
display(pd.DataFrame(pairs.read_generations(result["generation_cache"]))[
    ["id", "completion_tokens", "seconds", "text"]].head())

# %% [markdown]
# ## Human review

# %%
print(f"{len(result['review_sample'])} pairs to review in {stage_dir / 'review_sample.csv'}")
display(result["review_sample"].groupby("kind", sort=False).size().rename("pairs in the sample").to_frame())
review = result["review"]
if review is None:
    print("No review_csv given: every checker-verified pair is kept.")
else:
    agreement = "n/a" if review["agreement"] is None else f"{review['agreement']:.0%}"
    print(f"Review {review['csv']}: {review['reviewed']} reviewed, {review['agree']} agreed, {review['disputed']} "
          f"disputed (agreement {agreement}); dropped: {review['dropped'] or 'none'}")

# %% [markdown]
# ## What the pairs are made of
#
# Pairs per rejection kind and category (with each kind's share), the checker's error kinds behind each
# rejection kind, and the same counts as a figure (saved as `pair_stats.png`).

# %%
display(pairs.kind_table(result["pairs"]))
display(pairs.error_table(result["pairs"]))

# %%
fig = data_views.plot_pair_stats(result["stats"])
fig.savefig(stage_dir / "pair_stats.png", dpi=150, bbox_inches="tight")
fig

# %% [markdown]
# ## The preference dataset, and checks on what was saved
#
# A couple of pairs: the end of the prompt, then the chosen and the rejected completion. The saved dataset holds
# every kept pair, and every prompt ends where the model's answer begins.

# %%
saved = result["saved"]
for split, data in saved.items():
    for row in data.select(range(min(2, len(data)))):
        print(f"\n--- {split} · {row['pair_id']} · {row['category']} · {row['kind']} ({row['checker_error']})")
        print(f"prompt tail: ...{row['prompt'][-200:]!r}")
        print(f"chosen:      {row['chosen']!r}")
        print(f"rejected:    {row['rejected']!r}")
assert sum(len(data) for data in saved.values()) == card["pairs"] == len(result["pairs"])
assert all(row["chosen"] != row["rejected"] for data in saved.values() for row in data)
