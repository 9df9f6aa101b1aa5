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
# # 06 · Hybrid optimization: SFT → DPO, SFT → GRPO, and self-improvement cycles
#
# **What this does.** Starts from a stage-04 SFT model (`start`) and trains it further:
#
# * **SFT → DPO** on stage 03's verified pairs (TRL's `DPOTrainer`);
# * **SFT → GRPO** on stage-02 prompts (TRL's `GRPOTrainer`): the reward is bfcl's official checker's verdict
#   (1 or 0) on the completion, decoded by the study's literal-only decoder, so a malformed or malicious
#   completion scores 0 and nothing the model wrote is ever run. No shaping term is added;
# * **cycles**, the paper's hybrid loop: the current model answers training prompts as the evaluation runs it
#   (its exported GGUF on stage 01's backend), its own answers that the checker rejects become `rejected` (the
#   verified reference `chosen`), it is trained on them (DPO or GRPO), and the result is evaluated; `cycles`
#   rounds.
#
# Every model is exported to GGUF and evaluated with stage 01's protocol. The paper names the compute cost of
# hybrid cycles as its open problem, so each row below carries its training seconds beside its accuracy.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = HybridStageConfig's defaults)
start = "sft-lora"  # the stage-04 model to start from
sft_dpo = {"max_steps": 1, "beta": 0.1, "learning_rate": 5e-6,
           "per_device_train_batch_size": 1}  # trl.DPOConfig fields; None skips SFT -> DPO
sft_grpo = {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
            "max_completion_length": 16}  # trl.GRPOConfig fields; None skips SFT -> GRPO
cycles = 1  # self-improvement rounds
cycle_method = "dpo"  # dpo | grpo
cycle_rows = 2  # training prompts answered per cycle
cycle_training = {"max_steps": 1, "learning_rate": 5e-6,
                  "per_device_train_batch_size": 1}  # trl.DPOConfig fields (GRPOConfig with cycle_method grpo)
use_lora = True
lora = {}
train_pairs = None  # seeded sample of stage-03 train pairs for SFT -> DPO; None for all
grpo_rows = 8  # seeded sample of stage-02 train rows as GRPO prompts
grpo_max_prompt_length = 1024  # GRPO leaves out longer prompts (TRL 1.16 has no option of its own)
# compute-matched SFT: SFT continued from `start` for the seconds each hybrid named here trained (None skips it)
sft_matched = {"learning_rate": 2e-4, "lr_scheduler_type": "constant"}
sft_matched_to = ["sft→dpo", "sft→grpo"]
sft_matched_rows = 8  # seeded sample of stage-02 train rows for it
evaluate_categories = ["simple_python", "irrelevance"]  # a subset of stage 01's categories; None for all of them
seed = 0
stage_dir = "outputs/smoke/06_hybrid"

# %%
from IPython.display import display

from tinyllm_utils.analysis import training_views
from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.stages.common import before_after, failure_shift, summary_table
from tinyllm_utils.stages.hybrid import HybridStageConfig, run_hybrid_stage
from tinyllm_utils.train.progress import quiet_notebook_output

stage_dir = resolve_stage_dir(stage_dir)
quiet_notebook_output()  # no library widget bars (saved frozen at 0 %); known, harmless warnings filtered
config = config_from_parameters(HybridStageConfig, globals())
config

# %% [markdown]
# ## Train, export, evaluate
#
# Accuracy and compute per model and per cycle: training seconds (a cycle's include its generation) and tokens/s.
#
# What the cell prints, per model: one line when training starts and one when it ends (steps done, seconds, first
# and last loss), the logged curves as a short table (the whole curve is in `curves.csv` and plotted below), then
# the evaluation's progress per category. Two informational lines are kept: llama.cpp's `llama_kv_cache_iswa:
# using full-size SWA cache` (Gemma 3's sliding-window layers get a full cache: correct, slightly more memory) and
# tokenizers' `Unknown separator token '<bos>' in TemplateProcessing<pair>` (the saved tokenizer's template for
# sentence *pairs*, which no prompt here uses).

# %%
results = run_hybrid_stage(config, stage_dir)
display(summary_table(results))

# %% [markdown]
# ## Training curves
#
# DPO: loss, reward margin and accuracy; GRPO: mean reward with its spread across the group of generations.

# %%
for label, result in results.items():
    if "training" in result:
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

