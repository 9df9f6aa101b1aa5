"""Stage 02: training rows from the configured sources, through the filters (parse, schema, checker,
duplicates, decontamination against BFCL, token budget), split by function and augmented; saved with a data card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tinyllm_utils.bfcl.data import ALL_CATEGORIES
from tinyllm_utils.core.results import write_json_atomic, write_text_atomic
from tinyllm_utils.core.work import replace_dir_atomic
from tinyllm_utils.data.rows import (
    AUGMENTATIONS,
    BFCL_POOL,
    FILTER_DESCRIPTIONS,
    ROW_CHECKS,
    SYNTHETIC_SOURCES,
    BenchmarkIndex,
    apply_check,
    apply_length_limits,
    as_datasetdict,
    augment,
    card_markdown,
    category_of,
    data_card,
    decontaminate,
    load_sources,
    remove_duplicates,
    remove_near_duplicates,
    split_by_function,
    token_counter,
)


@dataclass
class DataConfig:
    bfcl_sources: list[str] = field(default_factory=lambda: list(BFCL_POOL))
    # user datasets: [{"path": "file.jsonl or org/name", "format": "xlam|glaive|chat_with_tools|agentbank",
    #                  "split": "train", "limit": 1000}]
    user_datasets: list[dict] = field(default_factory=list)
    # generated sources (tinyllm_utils.data.api_source), same filters: ["python_apis"] or
    # [{"name": "python_apis", "rows": 4000, "mix": {...}, "modules": [...]}]; empty = bfcl_sources and user_datasets only
    synthetic_sources: list[object] = field(default_factory=list)  # names (str) or dicts
    model: str = "gemma-3-270m"  # whose tokenizer measures lengths
    max_prompt_tokens: int = 2048
    max_answer_tokens: int = 256
    ngram: int = 8
    contamination_threshold: float = 0.5
    near_duplicate_threshold: float = 0.9
    augment: dict = field(default_factory=lambda: {"parallel": 0.3, "multiple": 0.3, "irrelevance": 0.2})
    max_distractors: int = 3
    validation_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.bfcl_sources) - set(BFCL_POOL)
        if unknown:
            raise ValueError(f"unknown bfcl_sources {sorted(unknown)}; expected some of {BFCL_POOL}")
        unknown = set(self.augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augment kinds {sorted(unknown)}; expected some of {AUGMENTATIONS}")
        unknown = {s if isinstance(s, str) else s.get("name") for s in self.synthetic_sources} - set(SYNTHETIC_SOURCES)
        if unknown:
            raise ValueError(f"unknown synthetic_sources {sorted(map(str, unknown))}; "
                             f"expected some of {SYNTHETIC_SOURCES}")
        distractors = self.augment.get("multiple") or self.augment.get("irrelevance")
        if distractors and self.max_distractors < 1:  # multiple / irrelevance augmentation adds 1..max docs
            raise ValueError(f"max_distractors must be at least 1 when augmenting, got {self.max_distractors}")
        # a row's id is `<source>-<index>` and its source names it in every table: two datasets under one
        # source name (the format's, by default) would share ids and be counted as one
        names = [spec.get("source") or spec.get("format") for spec in self.user_datasets]
        shared = sorted({n for n in names if names.count(n) > 1}, key=str)
        if shared:
            raise ValueError(f"user_datasets share the source name(s) {shared}: give each entry its own `source`, "
                             "e.g. {path: ..., format: xlam, source: xlam-a}")

    def to_dict(self) -> dict:
        return asdict(self)




def build_dataset(config: DataConfig, progress: bool = True) -> dict:
    """Run every step; returns the splits, the rejected rows and the reports (nothing written yet)."""
    steps, rejected = [], []

    def record(step: str, kept: list[dict], removed: list[dict]) -> list[dict]:
        steps.append({"step": step, "rows_in": len(kept) + len(removed), "removed": len(removed),
                      "rows_out": len(kept), "rule": FILTER_DESCRIPTIONS["convert" if step == "converted" else step]})
        rejected.extend(removed)
        return kept

    rows = record("converted", *load_sources(config, progress))
    index = BenchmarkIndex(ALL_CATEGORIES, config.ngram)
    rows, removed, contamination = decontaminate(rows, index, config.contamination_threshold, progress)
    rows = record("decontamination", rows, removed)
    spec, tokenizer, count_tokens = token_counter(config.model)
    filters = {**{rule: lambda r, rule=rule: apply_check(r, rule) for rule in ROW_CHECKS},
               "duplicate": remove_duplicates,
               "near_duplicate": lambda r: remove_near_duplicates(r, config.near_duplicate_threshold),
               "length": lambda r: apply_length_limits(r, count_tokens, spec, tokenizer,
                                                       config.max_prompt_tokens, config.max_answer_tokens, progress)}
    for rule, run in filters.items():
        rows = record(rule, *run(rows))
    for row in rows:
        row["category"], row["augmentation"] = category_of(row), ""
    splits = split_by_function(rows, config.validation_fraction, config.seed)
    for name, split_rows in splits.items():
        # augmented rows meet the same checker and token budget as the pool; the ones that fail are rejected
        new, removed = apply_check(augment(split_rows, config.augment, config.max_distractors, config.seed, name),
                                   "checker_accepts")
        new, too_long = filters["length"](new)
        rejected += removed + too_long
        splits[name] = split_rows + new
    by_rule_and_source = (pd.DataFrame(rejected, columns=["source", "rule"]).value_counts().rename("removed")
                          .reset_index() if rejected else pd.DataFrame(columns=["source", "rule", "removed"]))
    return {"splits": splits, "rejected": rejected, "filter_report": pd.DataFrame(steps),
            "rejected_by_source": by_rule_and_source, "contamination": contamination, "config": config}


def save_dataset(result: dict, out_dir: str | Path, figure=None) -> Path:
    """Write rejected.jsonl, the reports, data_card.{json,md}, the figure and dataset/ (renamed into place
    whole). Whether the stage finished is the pipeline's marker (tinyllm_utils.core.work), written after all of it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in result["rejected"]))
    for name, table in (("filter_report", result["filter_report"]),
                        ("rejected_by_source", result["rejected_by_source"]),
                        ("decontamination_report", result["contamination"])):
        write_text_atomic(out_dir / f"{name}.csv", table.to_csv(index=False))
    card = data_card(result)
    write_json_atomic(out_dir / "data_card.json", card)
    write_text_atomic(out_dir / "data_card.md", card_markdown(card))
    if figure is not None:
        figure.savefig(out_dir / "length_distribution.png", dpi=120)
    return replace_dir_atomic(lambda path: as_datasetdict(result["splits"]).save_to_disk(str(path)),
                              out_dir / "dataset")
