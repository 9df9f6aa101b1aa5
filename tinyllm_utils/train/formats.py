"""Stage 02 rows and stage 03 pairs as TRL's dataset formats, rendered by the evaluation's own prompt path for the
model trained (models.families: its renderer, its answer syntax, its end of turn); rows that do not fit
`max_length` are left out with a count, never cut.

`spec` below is the model's registry.ModelSpec (`model._tinyllm_spec` after loading.load_for_training), or a bare
prompt format ('gemma' | 'chat_template') for the Gemma turns / a chat template with Python call answers.
"""

from __future__ import annotations

import json

from tinyllm_utils.data.rows import row_entry
from tinyllm_utils.models import families
from tinyllm_utils.models.prompts import answer_text

# ---------------------------------------------------------------- datasets (stage 02 / 03 -> TRL formats)


def _rows(data) -> list[dict]:
    return [dict(row) for row in data] if not isinstance(data, list) else data


def prompt_and_answer(row: dict, spec="gemma", tokenizer=None) -> dict:
    """A row's evaluation prompt and its reference answer in the model's syntax, ended as its turns end."""
    return families.training_example(row_entry(row), answer_text(json.loads(row["target"])),
                                     families.spec_of(spec), tokenizer)


def sft_dataset(data, spec="gemma", tokenizer=None):
    """Stage-02 rows (a split or a list of dicts) as TRL prompt/completion rows in the evaluation format: the
    prompt is the row's evaluation prompt (for Gemma ending on `<start_of_turn>model\\n`), the completion the
    reference answer in the family's syntax (or the no-call sentence) plus the end of turn. Loss on the
    completion only (`completion_only_loss`)."""
    from datasets import Dataset

    rows = [prompt_and_answer(row, spec, tokenizer) for row in _rows(data)]
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": [], "completion": []})


def dpo_dataset(pairs):
    """Stage-03 pairs (already in the evaluation format) reduced to TRL's preference columns."""
    return pairs.select_columns(["prompt", "chosen", "rejected"])


GRPO_COLUMNS = ("id", "category", "messages", "functions", "target")


def grpo_dataset(data, spec="gemma", tokenizer=None):
    """Stage-02 rows as GRPO prompts; the columns the checker needs (id, category, messages, functions, target:
    JSON strings) ride along and reach `checker_reward` as keyword lists, with `parser` (the family's parser id,
    families.parser_name) and `end_of_turn`, so the reward reads a completion as the evaluation does."""
    from datasets import Dataset

    spec = families.spec_of(spec)
    reading = {"parser": families.parser_name(spec), "end_of_turn": families.end_of_turn(spec, tokenizer)}
    rows = [{"prompt": families.training_prompt(row_entry(row), spec, tokenizer),
             **{c: row[c] for c in GRPO_COLUMNS}, **reading} for row in _rows(data)]
    return Dataset.from_list(rows)


class NothingFitsError(ValueError):
    """Every row is longer than the trainer's max_length: training would see nothing."""


def drop_too_long(dataset, tokenizer, max_length: int | None, answer_columns=("completion",)):
    """Rows whose prompt + each answer (SFT: the completion; DPO: chosen and rejected; GRPO, no answer column:
    the prompt alone) fit `max_length` tokens, and how many were dropped. The trainers would truncate the rest: a
    cut answer teaches a call that does not parse, and one cut away entirely trains on nothing with a silent zero
    loss (trl#6668). No dataset (an absent eval set) gives (None, 0)."""
    if dataset is None or not max_length:
        return dataset, 0

    def fits(row) -> bool:
        texts = [row["prompt"] + row[column] for column in answer_columns] or [row["prompt"]]
        return all(len(tokenizer(text).input_ids) <= max_length for text in texts)

    kept = dataset.filter(fits)
    if len(dataset) and not len(kept):
        raise NothingFitsError(f"none of the {len(dataset)} rows fits max_length={max_length} tokens (prompt + "
                               f"{' / '.join(answer_columns)}): raise max_length in the stage's training block")
    return kept, len(dataset) - len(kept)
