"""Stage 02 rows and stage 03 pairs as TRL's dataset formats, rendered by the evaluation's own prompt path; rows
that do not fit `max_length` are left out with a count, never cut.
"""

from __future__ import annotations

import json

from tinyllm_utils.data.rows import row_entry
from tinyllm_utils.models.prompts import answer_text, first_turn_messages, format_example, format_prompt

# ---------------------------------------------------------------- datasets (stage 02 / 03 -> TRL formats)


def _rows(data) -> list[dict]:
    return [dict(row) for row in data] if not isinstance(data, list) else data


def prompt_and_answer(row: dict, prompt_format: str, tokenizer=None) -> dict:
    messages = first_turn_messages(row_entry(row))[0]
    return format_example(messages, answer_text(json.loads(row["target"])), prompt_format, tokenizer)


def sft_dataset(data, prompt_format: str = "gemma", tokenizer=None):
    """Stage-02 rows (a split or a list of dicts) as TRL prompt/completion rows in the evaluation format: the
    prompt ends on `<start_of_turn>model\\n`, the completion is the reference call list (or the no-call sentence)
    plus the end-of-turn marker. Loss on the completion only (`completion_only_loss`)."""
    from datasets import Dataset

    rows = [prompt_and_answer(row, prompt_format, tokenizer) for row in _rows(data)]
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": [], "completion": []})


def dpo_dataset(pairs):
    """Stage-03 pairs (already in the evaluation format) reduced to TRL's preference columns."""
    return pairs.select_columns(["prompt", "chosen", "rejected"])


GRPO_COLUMNS = ("id", "category", "messages", "functions", "target")


def grpo_dataset(data, prompt_format: str = "gemma", tokenizer=None):
    """Stage-02 rows as GRPO prompts; the columns the checker needs (id, category, messages, functions, target:
    JSON strings) ride along and reach `checker_reward` as keyword lists."""
    from datasets import Dataset

    rows = []
    for row in _rows(data):
        prompt = format_prompt(first_turn_messages(row_entry(row))[0], prompt_format, tokenizer)
        rows.append({"prompt": prompt, **{c: row[c] for c in GRPO_COLUMNS}})
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
