"""Stage 03: verified chosen/rejected pairs from stage 02's rows (the rejecter model's own checked failures
plus synthetic negatives), with per-kind statistics and a review sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinyllm_utils.backends.base import prompt_tokenizer
from tinyllm_utils.data.pairs import (
    SYNTHETIC_KINDS,
    apply_review,
    build_pairs,
    check_review_csv,
    default_data_dir,
    export_review,
    generate_rejections,
    generation_cache_path,
    load_stage02,
    pair_stats,
    pairs_card,
    save_pairs,
    select_rows,
    to_preference_dataset,
    verify_chosen,
    verify_pairs,
)
from tinyllm_utils.models.registry import resolve_model


@dataclass
class PairConfig:
    model: str = "gemma-3-270m"  # the model the pairs are formatted for (the DPO policy): its prompt format
    rejecter: str = "gemma-3-270m"  # the weaker model whose wrong answers become `rejected`
    backend: str = "llama_cpp"
    rejecter_max_new_tokens: int = 64
    batch_size: int = 8  # prompts per batch on the transformers backend
    limit: int | None = 6  # rows per split (seeded, round-robin over categories); None = all
    negatives_per_row: int = 1  # synthetic negatives for a row whose model answer is unusable
    synthetic_ratio: float = 0.5  # share of rows with a usable model answer that also get synthetic negatives
    synthetic_kinds: list[str] = field(default_factory=lambda: list(SYNTHETIC_KINDS))
    review_per_kind: int = 5  # pairs per rejection kind in the review sample
    review_csv: str | None = None  # a filled-in review sample (verdict column), None before any review
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.synthetic_kinds) - set(SYNTHETIC_KINDS)
        if unknown:
            raise ValueError(f"unknown synthetic kinds {sorted(unknown)}; expected some of {SYNTHETIC_KINDS}")

    def to_dict(self) -> dict:
        return asdict(self)




def run_stage(config: PairConfig, stage_dir: str | Path, data_dir: str | Path | None = None,
              progress: bool = True) -> dict:
    """Stage 03 from the stage-02 dataset to the saved pairs; returns every intermediate result for display.

    Steps: select rows -> verify chosen -> the rejecter's answers (cached per row) -> pairs -> verify every
    pair -> review sample (and verdicts, if `config.review_csv`) -> statistics -> save. Reruns are the
    pipeline's business (tinyllm_utils.core.work); inside the stage, only the rejecter's generations are reused.
    """
    stage_dir = Path(stage_dir)
    check_review_csv(config.review_csv, stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir) if data_dir else default_data_dir(stage_dir)
    dataset = load_stage02(data_dir)
    rows = select_rows(dataset, config.limit, config.seed)
    candidates, chosen_failures = verify_chosen(rows)
    cache = generation_cache_path(stage_dir, config)
    generations = generate_rejections(candidates, config, cache, progress=progress)
    built, outcomes = build_pairs(candidates, generations, config)
    problems = verify_pairs(built)
    if problems:
        raise AssertionError(f"pairs that break the chosen-right / rejected-wrong contract: {problems}")
    review_sample_frame = export_review(built, stage_dir / "review_sample.csv", config.review_per_kind, config.seed)
    kept, review_report = apply_review(built, config.review_csv) if config.review_csv else (built, None)
    stats = pair_stats(kept)
    spec = resolve_model(config.model)
    preference = to_preference_dataset(kept, spec, prompt_tokenizer(spec))
    card = pairs_card(config, rows, chosen_failures, outcomes, kept, review_report, data_dir)
    saved = save_pairs(stage_dir, preference, stats, card)
    return {"dataset": dataset, "rows": rows, "chosen_failures": chosen_failures, "generation_cache": cache,
            "outcomes": outcomes, "built": built, "review_sample": review_sample_frame, "review": review_report,
            "pairs": kept, "stats": stats, "card": card, "saved": saved}
