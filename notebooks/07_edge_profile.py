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
# # 07 · Edge profile: quantized variants, their accuracy, latency, memory and size
#
# **What this does.** Takes checkpoints of the study as GGUF — the base model and the best trained model of
# stages 04-06 by default — and measures what a device owner decides by:
#
# * **quantized variants** made with llama.cpp's own quantizer (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0 as `types`
#   asks), each checked to load and generate;
# * **accuracy** of every variant on stage 01's entries (same protocol), and the accuracy kept against F16 with a
#   paired interval on the same entries;
# * a **device profile** per variant and thread count on representative BFCL prompts: file size, load time,
#   peak RSS, time to first token, prompt and decode tokens/s, seconds per entry, what llama.cpp's prompt-prefix
#   reuse saves, with the machine recorded;
# * the **Pareto front** of accuracy vs decode latency vs memory, and the recommended variant per checkpoint: the
#   smallest that keeps ≥ 95 % of its F16 accuracy.
#
# The offline base model exists only as Q4_K_M: its "F16" is that file de-quantized, so for the base, accuracy
# kept vs F16 measures a second quantization, not the loss from the original weights. Trained checkpoints are
# exported from full precision and have a true F16.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = EdgeStageConfig's defaults)
checkpoints = ["base", "best"]  # base | best (stages 04-06: stages.common.best_model) | a method label
types = ["Q8_0", "Q4_K_M"]  # quantized variants besides F16
threads = [2]
threads_for = {}  # per variant, replaces `threads`, e.g. {"Q4_K_M": [1, 2]}
runs = 1  # profile repetitions (median and spread)
decode_tokens = 16
transformers_reference = False  # also profile the transformers model (fp32, bf16) of each checkpoint
evaluate_categories = ["simple_python", "irrelevance"]  # a subset of stage 01's categories; None for all of them
best_also_on = []  # the best trained model (F16) also on these of stage 01's categories or groups, e.g. live
seed = 0
stage_dir = "outputs/smoke/07_edge_profile"

# %%
import pandas as pd
from IPython.display import Image, display

from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.stages.edge_profile import EdgeStageConfig, run_edge_profile_stage

stage_dir = resolve_stage_dir(stage_dir)
config = config_from_parameters(EdgeStageConfig, globals())
pd.set_option("display.precision", 2)
config

# %% [markdown]
# ## Quantize, evaluate, profile

# %%
edge = run_edge_profile_stage(config, stage_dir)

# %% [markdown]
# ## Accuracy vs latency vs memory
#
# One row per checkpoint × variant (at the first thread count); `pareto` marks the variants no other variant
# beats on accuracy, decode latency and peak memory at once.

# %%
display(edge["table"])
display(Image(filename=str(edge["figures"][0])))

# %% [markdown]
# ## Recommended variant per checkpoint
#
# The smallest file whose accuracy keeps at least 95 % of the checkpoint's F16 accuracy on the same entries.

# %%
display(edge["recommendation"])

# %% [markdown]
# ## Checks on what was written

# %%
assert (stage_dir / "edge_table.csv").exists() and (stage_dir / "edge_recommendation.csv").exists()
assert len(edge["table"]) >= len(config.checkpoints) * (len(config.types) + 1)
