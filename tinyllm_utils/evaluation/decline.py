"""A calibrated call/no-call decision at decoding time: the threshold for `EvalConfig.decline_bias`.

A fine-tuned small model that has seen a few no-call rows still ranks "write a call" above "decline" on most
prompts, also where no offered function fits: greedy decoding takes the top first token, so it calls. The no-call
answer's first token is usually the runner-up, though. Adding a bias `b` to that token's logit at the answer's
first position (and nowhere else) declines exactly where

    margin = max(logit of any other token) - logit(no-call token) < b

so `b` is a threshold on one score per prompt. `calibrate_threshold` picks it on held-out training rows (stage
02's validation split, never BFCL's entries): the `b` that best separates rows that need a call from rows that
need none (balanced accuracy, so the rarer no-call rows count as much). b = 0 is plain greedy decoding. The
decision is reported as its own decoding option, beside free and grammar decoding.
"""

from __future__ import annotations


def calibrate_threshold(call_margins: list[float], decline_margins: list[float]) -> dict:
    """The bias that maximises balanced accuracy of "decline iff margin < bias" on labelled margins (rows that
    need a call, rows that need none); among equals, the one closest to 0 (plain greedy). Also what greedy
    (bias 0) would score on the same rows, for comparison."""
    if not call_margins or not decline_margins:
        raise ValueError(f"calibration needs rows of both kinds: {len(call_margins)} that call, "
                         f"{len(decline_margins)} that decline")

    def balanced(bias: float) -> float:
        declined = sum(m < bias for m in decline_margins) / len(decline_margins)
        called = sum(m >= bias for m in call_margins) / len(call_margins)
        return (declined + called) / 2

    values = sorted(set(call_margins) | set(decline_margins))
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(values, values[1:])]
    candidates += [values[0] - 1.0, values[-1] + 1.0]
    best = max(candidates, key=lambda b: (balanced(b), -abs(b)))
    return {"bias": round(best, 4), "balanced_accuracy": balanced(best), "greedy_balanced_accuracy": balanced(0.0),
            "declined_share_of_no_call_rows": sum(m < best for m in decline_margins) / len(decline_margins),
            "called_share_of_call_rows": sum(m >= best for m in call_margins) / len(call_margins),
            "n_call": len(call_margins), "n_no_call": len(decline_margins)}
