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
# # 08 · Analysis: one results table, Table IV beside the published rows, paired statistics, figures
#
# **What this does.** Reads every evaluation the run saved (stage 01's baseline, every trained checkpoint of
# stages 04-06, edge variants of stage 07 when they exist) from files alone — no model is loaded — and builds:
#
# * one tidy table (`results.parquet` / `.csv`): run, stage, model, method, parent, backend, quantization,
#   category, n, correct, accuracy with its 95 % interval (Wilson per category; for a composite score, the
#   categories' Wilson intervals combined by MOVER, so a category answered all wrong still counts as uncertain),
#   training seconds, and the BFCL v3 and v4 overall rows;
# * the paper's **Table IV** for every model × method, with reference rows (the paper's headline, leaderboard rows
#   of comparable small models, FunctionGemma's model card) from `tinyllm_utils/reference/`, each carrying its
#   source, date and BFCL version; missing components are shown as missing, never 0;
# * **paired comparisons** of each trained model with its parent and with the base on their shared entries:
#   McNemar's exact test per category, a paired permutation test per composite, paired bootstrap intervals, and
#   Holm's correction over every comparison of the table;
# * **findings** written from those tables, and every figure (PNG and PDF).
#
# `make figures` rebuilds the same files into `paper_figures/` (`python -m tinyllm_utils.stages.analysis --run ...`).
# A stage that did not run is listed as missing, not an error.

# %% tags=["parameters"]
# Parameters (papermill overrides these; the defaults are the `smoke` profile = AnalysisConfig's defaults)
n_resamples = 2000  # bootstrap resamples per interval
seed = 0
reference = True  # reference rows beside ours in Table IV
stage_dir = "outputs/smoke/08_analysis"

# %%
import time

import pandas as pd
from IPython.display import Image, Markdown, display

from tinyllm_utils.core.params import config_from_parameters, resolve_stage_dir
from tinyllm_utils.stages.analysis import AnalysisConfig, make_figures

stage_dir = resolve_stage_dir(stage_dir)
run_dir = stage_dir.parent
config = config_from_parameters(AnalysisConfig, globals())
pd.set_option("display.precision", 1)

# %%
start = time.perf_counter()
written = make_figures(run_dir, stage_dir, n_resamples=config.n_resamples)
print(f"{len(written)} files rebuilt from {run_dir} in {time.perf_counter() - start:.1f} s")
display(Markdown((stage_dir / "figures_status.md").read_text()))

# %% [markdown]
# ## The report card
#
# `REPORT.md`, written beside the tables: where the run ran (environment, commit), each stage's wall time and peak
# memory, the data and the training in brief; its tables and figures follow below. `make figures` rebuilds it into
# `paper_figures/`, where this stage is listed as finished too.

# %%
report = (stage_dir / "REPORT.md").read_text()
display(Markdown(report.split("\n## Findings")[0].split("\n", 1)[1]))

# %% [markdown]
# ## Table IV (the paper's layout), with reference rows

# %%
display(Markdown((stage_dir / "table_iv.md").read_text()))

# %% [markdown]
# ## Paired comparisons
#
# `diff` is B − A in points on the entries both answered, with its paired 95 % bootstrap interval; `p_holm` is
# Holm-adjusted over every row of this table.

# %%
try:
    comparisons = pd.read_csv(stage_dir / "comparisons.csv")
except pd.errors.EmptyDataError:  # no two evaluations share entries yet
    comparisons = pd.DataFrame()
columns = ["a", "b", "scoring", "comparison", "n", "acc_a", "acc_b", "diff", "ci_low", "ci_high", "p_value", "p_holm"]
display(comparisons[columns] if len(comparisons) else "no two evaluations share entries yet")

# %% [markdown]
# ## Findings (generated from the tables above)

# %%
display(Markdown((stage_dir / "findings.md").read_text()))

# %% [markdown]
# ## Names
#
# Tables and figures name each evaluation by a short label; what each stands for:

# %%
display(Markdown("\n\n".join(report.split("\n## Names\n", 1)[1].split("\n## ", 1)[0].split("\n\n")[1:])
                 if "\n## Names\n" in report else "no evaluation yet"))

# %% [markdown]
# ## Figures

# %%
for png in sorted(stage_dir.glob("*.png")):
    print(png.name)
    display(Image(filename=str(png)))

# %% [markdown]
# ## Checks on what was written

# %%
results = pd.read_parquet(stage_dir / "results.parquet")
assert len(results) and set(results["stage"]) >= {"01_baseline_evaluation"}, results["stage"].unique()
assert (stage_dir / "table_iv.md").exists() and (stage_dir / "findings.md").exists()
assert report.startswith("<!-- report-card ") and "## Stages" in report
