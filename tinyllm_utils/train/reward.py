"""The GRPO reward: bfcl's own checker on each completion (1 right, 0 wrong), read by the trained model's family
parser as its evaluation reads it; a checker crash on every completion of a batch raises.
"""

from __future__ import annotations

import warnings

from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.data.rows import row_example
from tinyllm_utils.models.families import FAMILIES, parser_by_name

# ---------------------------------------------------------------- reward (GRPO)

# Every family's end of turn: TRL decodes completions without special tokens, but a tokenizer that keeps one as
# text must not make a right answer unparseable.
_END_MARKERS = tuple(sorted({f.end_of_turn for f in FAMILIES.values() if f.end_of_turn}))


def _completion_text(completion, end_of_turn: str | None = None) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        completion = "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    text = str(completion)
    for marker in _END_MARKERS + ((end_of_turn,) if end_of_turn else ()):
        text = text.split(marker)[0]
    return text.strip()


def checker_reward(prompts, completions, *, category, messages, functions, target, id=None, parser=None,
                   end_of_turn=None, **_) -> list[float]:
    """1.0 when bfcl-eval's checker accepts the completion, else 0.0 (no shaping term).

    The completion is decoded by the row's `parser` column (families.parser_name of the model trained, set by
    formats.grpo_dataset: Python calls, xLAM's JSON list, Qwen's <tool_call> blocks, after Qwen3's reasoning);
    without one, by tinyllm_utils.bfcl.decoding (literals only, never evaluated); the text ends at the row's
    `end_of_turn` (e.g. TinyLlama's `</s>`) or any family's end of turn. Unparseable, unsafe or
    otherwise malformed text scores 0, and so does a text the checker itself fails on. Columns are the stage-02
    row's JSON strings (grpo_dataset)."""
    rewards, crashes = [], []
    for i, completion in enumerate(completions):
        row = {"id": (id[i] if id else str(i)), "category": category[i], "messages": messages[i],
               "functions": functions[i], "target": target[i]}
        parse = parser_by_name(parser[i]) if parser else None
        try:
            text = _completion_text(completion, end_of_turn[i] if end_of_turn else None)
            valid = score_single_turn(row_example(row), text, parse)["valid"]
        except Exception as exc:  # noqa: BLE001 (a checker crash on an odd output is that output's failure)
            valid = False
            crashes.append(f"{row['id']}: {type(exc).__name__}: {exc}")
        rewards.append(1.0 if valid else 0.0)
    if crashes and len(crashes) == len(completions):  # not odd outputs but a broken row or scorer: say so
        raise RuntimeError(f"checker_reward: scoring failed on every completion, e.g. {crashes[0][:300]}")
    if crashes:
        warnings.warn(f"checker_reward: {len(crashes)} of {len(completions)} completions crashed the checker "
                      f"(scored 0), e.g. {crashes[0][:300]}", stacklevel=2)
    return rewards
