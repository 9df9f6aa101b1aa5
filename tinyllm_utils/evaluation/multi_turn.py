"""BFCL's multi-turn loop in prompting mode, with a safe executor.

Per turn: generate -> decode -> execute against bfcl's simulated APIs (GorillaFileSystem, TradingBot, ...)
-> feed the results back, at most bfcl.MAXIMUM_STEP_LIMIT steps; the turn ends when the model's reply holds
no decodable call. As in bfcl's `inference_multi_turn_prompting`, held-out functions (miss_func) are offered
in a user message at their turn. Only calls re-serialized from our literal-only decoder reach bfcl's executor,
and only to offered API methods; every entry starts from fresh API state.
"""

from __future__ import annotations

import uuid

from tinyllm_utils.bfcl import shim as bfcl
from tinyllm_utils.bfcl.data import Example
from tinyllm_utils.bfcl.decoding import DecodeError, to_execution_calls
from tinyllm_utils.bfcl.grammar import call_list_grammar
from tinyllm_utils.bfcl.scoring import allowed_api_names
from tinyllm_utils.models import families


def execute_calls(calls: list[str], refused: list[str], example: Example, session: str) -> list[str]:
    """Run safe call strings against the entry's API instances; refused names get an error, not a call."""
    entry = example.entry
    results, _ = bfcl.execute_multi_turn_func_call(
        calls, entry.get("initial_config", {}), entry["involved_classes"], session, example.id,
        long_context="long_context" in example.category,
    ) if calls else ([], None)
    return results + [f"Error during execution: function '{name}' is not available." for name in refused]


def run_multi_turn(example: Example, backend, prompt_format: str | None = None, on_step=None, spec=None,
                   grammar: bool = False) -> dict:
    """Generate every turn of one multi-turn entry. Returns raw text per step per turn plus token counts.

    With `spec` (a registry.ModelSpec) the chat is kept as the model's family does it (FC models: the bfcl
    handler's messages, tool results fed back in its format, its parser); without it, prompting mode in
    `prompt_format`. With `grammar`, every step is constrained to a call list of the functions offered so far
    (a held-out function from its turn on) or prose (tinyllm_utils.bfcl.grammar).
    """
    entry = example.entry
    if spec is not None:
        chat = families.conversation(entry, spec, backend.tokenizer)
    else:
        chat = families.PlainConversation(entry, prompt_format, backend.tokenizer)
    turns = chat.turns
    holdout = entry.get("missed_function", {})
    offered = list(entry["function"])
    allowed = allowed_api_names(entry)
    session = f"tinyllm_infer_{uuid.uuid4().hex[:12]}"
    raw_turns: list[list[str]] = []
    stats = {"prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0, "steps": 0, "error": None}
    try:
        for turn_index, turn in enumerate(turns):
            if str(turn_index) in holdout:
                turn = [{"role": "user", "content": bfcl.ADDITIONAL_FUNCTION_PROMPT.format(
                    functions=holdout[str(turn_index)])}]
                offered += holdout[str(turn_index)]
            chat.add_user(turn)
            steps: list[str] = []
            raw_turns.append(steps)
            for _ in range(bfcl.MAXIMUM_STEP_LIMIT + 1):
                constrained = {"grammars": [call_list_grammar(offered)]} if grammar else {}
                generation = backend.generate([chat.prompt()], **constrained)[0]
                stats["prompt_tokens"] += generation.prompt_tokens
                stats["completion_tokens"] += generation.completion_tokens
                stats["seconds"] += generation.seconds
                stats["steps"] += 1
                if generation.error:
                    stats["error"] = generation.error
                    return {"raw": raw_turns, **stats}
                steps.append(generation.text)
                if on_step:
                    on_step()
                try:
                    calls, refused = to_execution_calls(chat.add_reply(generation.text), allowed)
                except DecodeError:
                    break  # no decodable call: the turn is over
                if not calls and not refused:
                    break
                chat.add_results(calls + refused, execute_calls(calls, refused, example, session))
            else:
                # bfcl force-quits the entry after too many steps, keeping this turn's steps: before the last
                # turn, the missing turns fail it (scoring's length check); on the last, the checker still runs.
                stats["force_quit_turn"] = turn_index
                return {"raw": raw_turns, **stats}
    finally:
        bfcl.clear_api_state(session)
    return {"raw": raw_turns, **stats}
