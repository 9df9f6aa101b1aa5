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
# # 04 · Supervised fine-tuning (LoRA and full) on the filtered data
#
# **What this does.** Trains the base model on stage 02's training rows with TRL's `SFTTrainer`: prompt /
# completion pairs in exactly the evaluation prompt format (the same row → entry → prompt path evaluation uses),
# loss on the completion only. LoRA (`lora_sft`, adapters on every linear layer, Gemma's tied embeddings kept
# tied) and full fine-tuning (`full_sft`) are trained when their block is set. The output head runs only on
# answer positions (tinyllm_utils.train.trainers: the 262 k-token head is most of a step's cost on a CPU).
#
# **Then every checkpoint is treated like the baseline**: LoRA merged, exported to GGUF (F16) and evaluated by
# the same evaluation core with stage 01's protocol and backend, so every difference in the tables below is the
# method's. Offline, the base is the embedded Q4_K_M GGUF de-quantized to fp32.
#
# **How to run.** In the pipeline after stages 01 and 02 (`python -m tinyllm_utils.pipeline --profile quick`), or
# here with the smoke defaults (`SFTStageConfig`'s). A killed run resumes from its last TRL checkpoint.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = SFTStageConfig's defaults)
model = "gemma-3-270m"  # the base model
lora_sft = {"max_steps": 2, "learning_rate": 2e-4}  # trl.SFTConfig fields for LoRA SFT; None skips it
full_sft = None  # trl.SFTConfig fields for full fine-tuning; None skips it
lora = {}  # peft.LoraConfig fields over r 16, alpha 32, all linear layers
train_rows = 8  # seeded sample of stage-02 train rows; None for all
evaluate_categories = ["simple_python", "irrelevance"]  # a subset of stage 01's categories; None for all of them
curve_points = 0  # learning curve: this many intermediate LoRA checkpoints evaluated, plus the final model
curve_categories = None  # the curve's categories; None for evaluate_categories
decoding_rows = []  # the LoRA model again under "decline", "grammar", "grammar+decline": each its own row
seed = 0
stage_dir = "outputs/smoke/04_sft"

# %%
from IPython.display import display

from tinyllm_utils.analysis import training_views
from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.stages.common import before_after, failure_shift, summary_table
from tinyllm_utils.stages.sft import SFTStageConfig, run_sft_stage
from tinyllm_utils.train.progress import quiet_notebook_output

stage_dir = resolve_stage_dir(stage_dir)
quiet_notebook_output()  # no library widget bars (saved frozen at 0 %); known, harmless warnings filtered
config = config_from_parameters(SFTStageConfig, globals())
config

# %% [markdown]
# ## Train, export, evaluate
#
# What the cell prints, per model: one line when training starts and one when it ends (steps done, seconds, first
# and last loss), the logged curves as a short table (the whole curve is in `curves.csv` and plotted below), then
# the evaluation's progress per category. Two informational lines are kept: llama.cpp's `llama_kv_cache_iswa:
# using full-size SWA cache` (Gemma 3's sliding-window layers get a full cache: correct, slightly more memory) and
# tokenizers' `Unknown separator token '<bos>' in TemplateProcessing<pair>` (the saved tokenizer's template for
# sentence *pairs*, which no prompt here uses).

# %%
results = run_sft_stage(config, stage_dir)
display(summary_table(results))

# %% [markdown]
# ## Training curves
#
# Loss, learning rate and gradient norm per step (`<method>/curves.csv`).

# %%
for label, result in results.items():
    display(training_views.plot_curves(result["curves"], title=f"{label}: {result['training']['steps']} steps"))

# %% [markdown]
# ## Before and after, on the same entries
#
# Each trained model against the model it started from and against the base, on the entries both answered:
# accuracy difference in points with its paired 95 % bootstrap interval, McNemar's exact p-value per category
# (a paired permutation test for composite scores), and Holm's correction over every comparison in the table.

# %%
comparison = before_after(stage_dir)
display(comparison[["a", "b", "scoring", "comparison", "acc_a", "acc_b", "diff", "ci_low", "ci_high", "p_value",
                    "p_holm"]] if len(comparison) else "nothing to compare yet")
display(failure_shift(stage_dir))

