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
# # 02 · Training data: quality filtering, decontamination, augmentation
#
# **What this does.** Builds the function-calling training set the later stages (03 pairs, 04 SFT, 05 DPO) read.
# Every source is converted to one schema (messages, offered functions, target calls or *no call*), then passes
# a chain of filters; each filter's count is shown and saved, and every removed row goes to `rejected.jsonl`
# with the rule, the field and the reason. The paper filtered AgentBank/Gorilla data by hand-written rules; here
# the rules are code in `tinyllm_utils/rows.py`, with tests.
#
# **Offline default pool.** bfcl-eval ships datasets it no longer scores (`data/unused_datasets`): exec_simple,
# exec_multiple, exec_parallel, exec_parallel_multiple, sql, rest, chatable and multi_turn_composite. They are
# all loaded; decontamination, not a hand-made list, decides which of them overlap the scored categories.
#
# **Your own data.** `user_datasets` takes local JSON/JSONL/parquet files or hub ids in the xLAM/APIGen,
# glaive-function-calling-v2, chat-with-tools (OpenAI or ShareGPT messages with `tools`) and AgentBank formats,
# e.g. `[{"path": "data/xlam_60k.json", "format": "xlam", "limit": 5000}]`.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = DataConfig's defaults)
# bfcl-eval unused datasets to load
bfcl_sources = ["exec_simple", "exec_multiple", "exec_parallel", "exec_parallel_multiple", "sql", "rest",
                "chatable", "multi_turn_composite"]
# extra datasets, each a dict with path, format, and optionally split and limit
user_datasets = []
# generated sources (tinyllm_utils.data.api_source): ["python_apis"] or [{"name": "python_apis", "rows": 4000}]
synthetic_sources = []
# whose tokenizer measures prompt and answer lengths
model = "gemma-3-270m"
max_prompt_tokens = 2048
max_answer_tokens = 256
# decontamination: word n-gram size and the share of a user turn's n-grams that flags it
ngram = 8
contamination_threshold = 0.5
near_duplicate_threshold = 0.9
# augmented rows of each kind, as a share of each split's clean rows
augment = {"parallel": 0.3, "multiple": 0.3, "irrelevance": 0.2}
max_distractors = 3
validation_fraction = 0.2
seed = 0
stage_dir = "outputs/smoke/02_data_filtering"

# %%
import pandas as pd
from IPython.display import Markdown, display

from tinyllm_utils.analysis import data_views
from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.data import rows
from tinyllm_utils.stages import data_filtering
from tinyllm_utils.train.progress import quiet_notebook_output

stage_dir = resolve_stage_dir(stage_dir)  # `outputs/...` lands in the outputs folder, wherever Jupyter runs
quiet_notebook_output()  # no library widget bars (saved frozen at 0 %); known, harmless warnings filtered
config = config_from_parameters(data_filtering.DataConfig, globals())
result = data_filtering.build_dataset(config)

# %% [markdown]
# ## Filters
#
# One line per step: rows in, rows removed, rows out. Order matters only for which rule a row is charged to:
# decontamination runs first so its report covers the whole pool; structural checks (the reference parses into
# literal calls, calls offered functions, gives required arguments with the declared types and enums) come before
# duplicate removal and the token budget. Reference answers that are expressions rather than literals (e.g.
# `p=1/6`) are rejected, not evaluated.
#
# (The cell above prints llama.cpp's `llama_context: n_ctx_seq (512) > n_ctx_train (0) -- possible training
# context overflow` once: the token budget counts tokens with the model's vocabulary alone (`vocab_only`), which
# carries no training context length; nothing is generated there.)

# %%
display(result["filter_report"])
display(result["rejected_by_source"].pivot_table(index="source", columns="rule", values="removed",
                                                 fill_value=0, aggfunc="sum"))

# %% [markdown]
# ## Decontamination
#
# For each source and each scored BFCL category with any overlap: how many rows have a user turn whose word
# n-grams are at least `contamination_threshold` inside that category's questions, how many have a user turn
# identical to one of its questions, and how many offer a function doc identical to one it offers. Any of the
# first or last removes the row.

# %%
contamination = result["contamination"]
display(contamination)

# %% [markdown]
# ## Examples of rejected rows
#
# A few rows per rule, with the field and the reason (all of them are in `rejected.jsonl`).

# %%
rejected = pd.DataFrame(result["rejected"])
if len(rejected):
    display(rejected.groupby("rule").head(2)[["id", "source", "rule", "field", "reason"]])

# %% [markdown]
# ## Split and augmentation
#
# Rows that call the same function (transitively) stay in one split, so validation measures generalization to
# functions never called in train. Augmentation then runs inside each split: **parallel** joins two requests
# (answered by both rows' calls), **multiple** adds distractor functions, **irrelevance** removes the needed
# function (the answer becomes *no call*). Every augmented row records its kind in the `augmentation` column.

# %%
mix = rows.mix_table(result["splits"])
display(mix.pivot_table(index="category", columns=["split", "made"], values="rows", fill_value=0, aggfunc="sum"))
display(rows.source_table(result["splits"], result["rejected"]))

# %%
fig = data_views.plot_lengths(result["splits"])
fig

# %% [markdown]
# ## Save
#
# `dataset/` (a `datasets.DatasetDict`, splits train/validation; string columns id, source, category, messages,
# functions, target, augmentation, structures as JSON), `rejected.jsonl`, `filter_report.csv`,
# `rejected_by_source.csv`, `decontamination_report.csv`, `data_card.json` / `data_card.md` and
# `length_distribution.png`. The dataset folder is renamed into place last.

# %%
path = data_filtering.save_dataset(result, stage_dir, figure=fig)
card = rows.data_card(result)
print(path, card["rows"], "rejected:", card["rejected"])
display(Markdown((stage_dir / "data_card.md").read_text()))

# %% [markdown]
# One saved row as the trainers will see it: the messages, and the reference answer rendered as call text.

# %%
import json

from datasets import load_from_disk

from tinyllm_utils.models.prompts import answer_text

dataset = load_from_disk(str(path))
example = dataset["train"][0]
print(example["id"], example["category"], example["augmentation"] or "original")
print(json.loads(example["messages"])[-1]["content"][:300])
print(answer_text(json.loads(example["target"])))

# %% [markdown]
# ## Checks on what was saved
#
# The saved dataset holds what the card says, and no function called in validation is called in train.

# %%
assert {split: len(rows) for split, rows in dataset.items()} == card["rows"], card["rows"]
assert card["functions_called"]["in_both"] == 0, card["functions_called"]
assert set(dataset["train"].column_names) == set(rows.COLUMNS)
