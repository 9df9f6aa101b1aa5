"""Build notebooks/03_pair_construction.ipynb (committed clean: no outputs, no execution counts).

    .venv/bin/python notebooks/build/make_03.py

Every step of the notebook is one call into tinyllm_utils.pairs; edit the cells here, then regenerate.
"""

import hashlib
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "03_pair_construction.ipynb"

TITLE = """\
# 03 · Verified preference pairs for DPO

**What this does.** Turns the filtered stage-02 dataset into `(prompt, chosen, rejected)` pairs for DPO:

* **chosen** is the reference answer written as the call list the evaluation expects (`[f(a=1), g(b='x')]`, or
  a short sentence saying no function fits on irrelevance rows). It is kept only when bfcl-eval's official
  checker accepts it.
* **rejected** is first what a weaker model (the *rejecter*) really writes for the same prompt: greedy
  decoding, no early stop. Its answer is kept only when the checker says it is wrong.
* When the rejecter writes nothing usable (an empty answer, the chosen text itself, or a correct answer),
  seeded **synthetic negatives** take its place: wrong function, missing required argument, wrong value or
  type, an extra call, or a call on an irrelevance prompt. The checker confirms each one is wrong too.

The TinyLLM paper took TinyLlama-1.1B outputs as rejected answers and checked them by hand. Here bfcl's
checker verifies every pair, chosen and rejected alike. A stratified review sample goes out as a CSV, and the
verdicts in it come back in through `review_csv`: pairs the reviewer disputes are dropped.

Prompts are in exactly the evaluation prompt format of `model` (the DPO policy), so training sees what
evaluation will feed the model. Model text is only ever decoded as literals, never run.

**How to run.** After stage 02, as part of the pipeline
(`python -m tinyllm_utils.pipeline --profile quick --stages 03_pair_construction`, which injects the parameters
below with papermill), or on its own in Jupyter: the defaults are the smallest (smoke) workload on the embedded
gemma-3-270m. Everything here is a call into `tinyllm_utils.pairs`; the notebook only tells the story."""

PARAMETERS = """\
# Parameters (papermill overrides these, the defaults are the `smoke` profile)
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
review_per_kind = 5  # pairs per rejection kind in the review sample
# review_csv: a filled-in review sample (verdict column ok or bad), None before any review
review_csv = None
seed = 0
stage_dir = "outputs/smoke/03_pair_construction\""""

SETUP = """\
import json
from pathlib import Path

import pandas as pd
from IPython.display import display

from tinyllm_utils import pairs
from tinyllm_utils.pipeline import PROJECT_ROOT
from tinyllm_utils.registry import ModelUnavailableError, resolve_model

# Relative paths are taken from the project root, wherever Jupyter runs.
stage_dir = PROJECT_ROOT / stage_dir
stage_dir.mkdir(parents=True, exist_ok=True)
data_dir = pairs.default_data_dir(stage_dir)  # the sibling 02_data_filtering/dataset
review_csv = PROJECT_ROOT / review_csv if review_csv else None
config = pairs.PairConfig(model=model, rejecter=rejecter, backend=backend,
                          rejecter_max_new_tokens=rejecter_max_new_tokens, batch_size=batch_size, limit=limit,
                          negatives_per_row=negatives_per_row, synthetic_ratio=synthetic_ratio,
                          review_per_kind=review_per_kind, seed=seed)
pd.set_option("display.max_colwidth", 80)
config"""

INPUT_MD = """\
## Input: the stage-02 dataset

The filtered, deduplicated train/validation rows that stage 02 wrote next to this stage
(`<run>/02_data_filtering/dataset`): the request (`messages`), the functions on offer and the reference
calls (`target`). Without it this stage stops here with one clear message."""

INPUT = """\
try:
    dataset = pairs.load_stage02(data_dir)
except pairs.MissingInputError as exc:
    raise SystemExit(f"MissingInputError: {exc}") from None  # one clear message instead of a traceback
display(pd.DataFrame({split: data.to_pandas()["category"].value_counts() for split, data in dataset.items()})
        .fillna(0).astype(int))"""

RESUME_MD = """\
## Already done?

What the pairs depend on (the parameters, the input dataset's fingerprints and the review file's content) is
saved with them, and a marker `pairs_done.json` is written last. When a finished run with the same key is on
disk, the steps below load it instead of computing it again; otherwise every step runs, and the rejecter's
generations still come from the on-disk cache where they exist."""

RESUME = """\
key = pairs.run_key(config, dataset, review_csv)
finished = pairs.load_finished(stage_dir, key)
if finished is not None:
    card = json.loads((stage_dir / "pairs_card.json").read_text())
    print(f"The same run already finished in {stage_dir}: loading its {card['pairs']} pairs, nothing recomputed.")
else:
    print(f"No finished run with these parameters and inputs in {stage_dir}: building the pairs.")"""

CHOSEN_MD = """\
## Rows, and the chosen answers the checker accepts

A seeded sample of `limit` rows per split that takes the categories in turn (all rows when `limit` is None).
Each reference answer is rendered as call text and scored by bfcl's checker exactly like a model answer;
a reference the checker refuses cannot be a chosen answer, so its row is listed here and left out."""

CHOSEN = """\
if finished is None:
    rows = pairs.select_rows(dataset, config.limit, config.seed)
    candidates, chosen_failures = pairs.verify_chosen(rows)
    n_rows, n_verified = len(rows), len(candidates)
else:
    n_rows, n_verified, chosen_failures = card["rows"], card["chosen_verified"], card["chosen_failed"]
print(f"The checker accepted {n_verified} of {n_rows} reference answers.")
if chosen_failures:
    display(pd.DataFrame(chosen_failures))
else:
    print("No reference answer failed.")"""

REJECT_MD = """\
## Rejected: the weaker model's own answers

The rejecter answers every kept row in its own prompt format, greedily and without stopping early (the
rejected text must be what the model really writes), up to `rejecter_max_new_tokens`. Each answer is appended
to a JSONL cache under `generations/` as soon as it is written, keyed by the rejecter and its decoding
settings, so an interrupted or repeated run only generates the rows still missing. The model is loaded only
when some row is not cached yet."""

REJECT = """\
if finished is None:
    cache = pairs.generation_cache_path(stage_dir, config)
    try:
        generations = pairs.generate_rejections(candidates, config, cache)
    except ModelUnavailableError as exc:
        raise SystemExit(f"{config.rejecter}: {exc}") from None  # one clear message instead of a traceback
    print(f"{len(generations)} rejecter answers, cached in {cache}")
    display(pd.DataFrame(pairs.read_generations(cache))[["id", "completion_tokens", "seconds", "text"]].head())
else:
    print("Loaded from the finished run: no generation needed.")"""

PAIRS_MD = """\
## Pairs, each verified by the checker

For every kept row: the rejecter's answer becomes a pair when the checker says it is wrong (kind
`model_generation`); otherwise `negatives_per_row` synthetic negatives take its place, and a share
`synthetic_ratio` of the rows with a usable answer get synthetic negatives as well. Then every pair is scored
again from scratch: chosen must pass and rejected must fail, with no exception."""

PAIRS = """\
if finished is None:
    built, outcomes = pairs.build_pairs(candidates, generations, config)
    problems = pairs.verify_pairs(built)
    assert problems == [], f"pairs that break the chosen-right / rejected-wrong contract: {problems}"
    print(f"{len(built)} pairs from {len(candidates)} rows; the checker accepts every chosen and refuses every "
          "rejected.")"""

OUTCOME_MD = """\
## What the weaker model wrote

Per category: answers `used` as rejected (the checker says wrong), `empty`, `same_as_chosen`, or `correct`
(right, though perhaps written differently). Only `used` answers become `model_generation` pairs."""

OUTCOME = """\
if finished is None:
    display(pairs.outcome_table(outcomes))
else:
    display(pd.Series(card["rejecter_outcomes"], name="rows").rename_axis("outcome").to_frame())"""

REVIEW_MD = """\
## Human review

A seeded sample of up to `review_per_kind` pairs of each rejection kind goes to `review_sample.csv` with empty
`verdict` and `note` columns. Fill in the verdict (`ok` / `agree` / `yes` to keep, `bad` / `disagree` / `no`
to drop; blank means not reviewed) and pass the file back as `review_csv`: disputed pairs are dropped and the
agreement rate is reported. Writing the sample again keeps verdicts and notes already in the file.
Statistics, the figure and the dataset below describe the pairs kept after review."""

REVIEW = """\
if finished is None:
    review_path = stage_dir / "review_sample.csv"
    sample = pairs.export_review(built, review_path, config.review_per_kind, config.seed)
    print(f"{len(sample)} pairs to review in {review_path}")
    display(sample.groupby("kind", sort=False).size().rename("pairs in the sample").to_frame())
    if review_csv is not None:
        kept, review_report = pairs.apply_review(built, review_csv)
    else:
        kept, review_report = built, None
else:
    review_report = card["review"]
if review_report is None:
    print("No review_csv given: every checker-verified pair is kept.")
else:
    agreement = review_report["agreement"]
    print(f"Review {review_report['csv']}: {review_report['reviewed']} pairs reviewed, {review_report['agree']} "
          f"agreed, {review_report['disputed']} disputed (agreement "
          f"{'n/a' if agreement is None else f'{agreement:.0%}'}); dropped: {review_report['dropped'] or 'none'}")
    if review_report["unknown_pair_ids"]:
        print(f"pair ids in the CSV that this run does not have: {review_report['unknown_pair_ids']}")"""

STATS_MD = """\
## What the pairs are made of

Pairs per rejection kind and category (with each kind's share), the checker's error kinds behind each
rejection kind, and the same counts as a figure (saved as `pair_stats.png`)."""

STATS = """\
if finished is None:
    final = kept
else:  # the saved dataset carries split, category, kind and checker error for every pair
    final = [dict(row, split=split) for split, data in finished.items() for row in data]
stats = pairs.pair_stats(final)
display(pairs.kind_table(final))
display(pairs.error_table(final))"""

FIGURE = """\
fig = pairs.plot_pair_stats(stats)
fig.savefig(stage_dir / "pair_stats.png", dpi=150, bbox_inches="tight")
fig"""

SAVE_MD = """\
## The preference dataset

TRL's standard preference format: `prompt` is exactly what evaluation feeds `model`, and `chosen` /
`rejected` are completions ending with its end-of-turn marker, plus the pair's id, category, kind and checker
error. Saved with `pair_stats.csv` and `pairs_card.json` (what was built from what, with versions, commit and
hardware); the `pairs_done.json` marker comes last, so an interrupted run never looks finished."""

SAVE = """\
if finished is None:
    spec = resolve_model(config.model)
    try:
        tokenizer = pairs.prompt_tokenizer(spec)
    except ModelUnavailableError as exc:
        raise SystemExit(f"{config.model}: {exc}") from None  # one clear message instead of a traceback
    preference = pairs.to_preference_dataset(kept, spec.prompt_format, tokenizer)
    card = pairs.pairs_card(config, rows, chosen_failures, outcomes, kept, review_report, data_dir)
    saved = pairs.save_pairs(stage_dir, preference, stats, card, key)
else:
    saved = finished
saved"""

WHERE_MD = """\
## Where everything landed

And a couple of pairs: the end of the prompt, then the chosen and the rejected completion."""

WHERE = """\
for path in ["pairs", "pair_stats.csv", "pair_stats.png", "pairs_card.json", "review_sample.csv",
             "generations", "pairs_done.json"]:
    print(f"{'ok' if (stage_dir / path).exists() else 'missing':8} {stage_dir / path}")
print(f"\\n{card['pairs']} pairs per kind: {card['pairs_per_kind']}\\nper split: {card['pairs_per_split']}")
for split, data in saved.items():
    for row in data.select(range(min(2, len(data)))):
        print(f"\\n--- {split} · {row['pair_id']} · {row['category']} · {row['kind']} ({row['checker_error']})")
        print(f"prompt tail: ...{row['prompt'][-200:]!r}")
        print(f"chosen:      {row['chosen']!r}")
        print(f"rejected:    {row['rejected']!r}")"""

CELLS = [
    ("markdown", TITLE, {}),
    ("code", PARAMETERS, {"tags": ["parameters"]}),
    ("code", SETUP, {}),
    ("markdown", INPUT_MD, {}),
    ("code", INPUT, {}),
    ("markdown", RESUME_MD, {}),
    ("code", RESUME, {}),
    ("markdown", CHOSEN_MD, {}),
    ("code", CHOSEN, {}),
    ("markdown", REJECT_MD, {}),
    ("code", REJECT, {}),
    ("markdown", PAIRS_MD, {}),
    ("code", PAIRS, {}),
    ("markdown", OUTCOME_MD, {}),
    ("code", OUTCOME, {}),
    ("markdown", REVIEW_MD, {}),
    ("code", REVIEW, {}),
    ("markdown", STATS_MD, {}),
    ("code", STATS, {}),
    ("code", FIGURE, {}),
    ("markdown", SAVE_MD, {}),
    ("code", SAVE, {}),
    ("markdown", WHERE_MD, {}),
    ("code", WHERE, {}),
]


def build() -> nbformat.NotebookNode:
    cells = []
    for number, (kind, source, metadata) in enumerate(CELLS):
        make = new_code_cell if kind == "code" else new_markdown_cell
        cell = make(source, metadata=metadata)
        cell.id = hashlib.sha256(f"03_pair_construction:{number}".encode()).hexdigest()[:8]  # stable on rebuild
        cells.append(cell)
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    nbformat.validate(nb)
    return nb


if __name__ == "__main__":
    nbformat.write(build(), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
