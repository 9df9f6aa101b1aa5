"""The GRPO reward: bfcl's own checker on each completion (1 right, 0 wrong); a checker crash on every completion
of a batch raises.
"""

from __future__ import annotations

import warnings

from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.data.rows import row_example
from tinyllm_utils.train.loading import END_OF_TURN

# ---------------------------------------------------------------- reward (GRPO)


def _completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        completion = "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    text = str(completion)
    return text.split(END_OF_TURN)[0].strip()


def checker_reward(prompts, completions, *, category, messages, functions, target, id=None, **_) -> list[float]:
    """1.0 when bfcl-eval's checker accepts the completion, else 0.0 (no shaping term).

    The completion is decoded by tinyllm_utils.bfcl.decoding (literals only, never evaluated); unparseable,
    unsafe (calls, attributes, names as arguments) or otherwise malformed text scores 0, and so does a text
    the checker itself fails on. Columns are the stage-02 row's JSON strings (grpo_dataset)."""
    rewards, crashes = [], []
    for i, completion in enumerate(completions):
        row = {"id": (id[i] if id else str(i)), "category": category[i], "messages": messages[i],
               "functions": functions[i], "target": target[i]}
        try:
            valid = score_single_turn(row_example(row), _completion_text(completion))["valid"]
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
