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
# # 05 · Direct preference optimization from the base model
#
# **What this does.** Trains the base model with TRL's `DPOTrainer` on stage 03's checker-verified pairs
# (chosen: the reference call list; rejected: a weaker model's wrong answer or a synthetic negative, both verified
# by bfcl's checker). With LoRA (`use_lora`), the reference model is the policy with its adapter disabled, so a
# second copy of the model is never held in memory. `beta`, the loss types (sigmoid, ipo, apo_zero, sigmoid + sft
# with `loss_weights`) and the learning rate are fields of `dpo` (TRL's `DPOConfig`).
#
# This is the "DPO only" row of the ablation; SFT → DPO is stage 06. The trained model is exported to GGUF and
# evaluated with stage 01's protocol, like every model of the study.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = DPOStageConfig's defaults)
model = "gemma-3-270m"
dpo = {"max_steps": 1, "beta": 0.1, "loss_type": ["sigmoid"], "learning_rate": 5e-6,
       "per_device_train_batch_size": 1}  # trl.DPOConfig fields
use_lora = True  # the reference is the policy with its adapter disabled
lora = {}
train_pairs = None  # seeded sample of stage-03 train pairs; None for all
evaluate_categories = ["simple_python", "irrelevance"]  # a subset of stage 01's categories; None for all of them
seed = 0
stage_dir = "outputs/smoke/05_dpo"

# %%
from IPython.display import display

from tinyllm_utils.analysis import training_views
from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.stages.common import before_after, failure_shift, summary_table
from tinyllm_utils.stages.dpo import DPOStageConfig, run_dpo_stage
from tinyllm_utils.train.progress import quiet_notebook_output

stage_dir = resolve_stage_dir(stage_dir)
quiet_notebook_output()  # no library widget bars (saved frozen at 0 %); known, harmless warnings filtered
config = config_from_parameters(DPOStageConfig, globals())
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
results = run_dpo_stage(config, stage_dir)
display(summary_table(results))

# %% [markdown]
# ## Training curves
#
# Loss, reward margin (chosen minus rejected implicit reward) and preference accuracy per step.

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

