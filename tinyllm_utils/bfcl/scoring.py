"""Score raw model output with bfcl-eval's official checkers: a pure function of (example, raw text).

Decoding is ours (tinyllm_utils.bfcl.decoding: literals only, nothing evaluated); checking is bfcl's
`ast_checker`, its relevance rules, and its `multi_turn_checker` fed only re-serialized safe calls.
Error kinds keep BFCL's namespaced names (`ast_decoder:decoder_failed`, `simple_function_checker:...`).
"""

from __future__ import annotations

import uuid

from tinyllm_utils.bfcl import shim as bfcl
from tinyllm_utils.bfcl.data import Example, is_multi_turn, is_relevance, language_of
from tinyllm_utils.bfcl.decoding import (
    WRONG_OUTPUT_FORMAT,
    DecodeError,
    UnsafeOutputError,
    decode_ast,
    decode_python,
    to_execution_calls,
)

_LANGUAGE = {"python": bfcl.Language.PYTHON, "java": bfcl.Language.JAVA, "javascript": bfcl.Language.JAVASCRIPT}
CHECKER_MODEL_NAME = "tinyllm"  # only used by bfcl to look up underscore_to_dot (False for prompting models)


def _result(valid: bool, decoded=None, error_type: str | None = None, error=None) -> dict:
    return {"valid": valid, "decoded": decoded, "error_type": error_type, "error": error}


def score_single_turn(example: Example, raw: str, parser=None) -> dict:
    """`parser(raw, language)` turns the text into calls (model_families.parser_for(spec)); default: the
    literal-only Python-call decoder of prompting mode."""
    category = example.category
    try:
        decoded = (parser or decode_ast)(raw, language_of(category))
    except UnsafeOutputError as exc:
        if is_relevance(category):  # a call when bfcl's decoder would have read one (never evaluated here)
            return _relevance(category, contains_call=exc.bfcl_decodes, decoded=None, error=str(exc))
        return _result(False, None, exc.error_type, str(exc))
    except DecodeError as exc:
        if is_relevance(category):
            return _relevance(category, contains_call=False, decoded=None, error=str(exc))
        return _result(False, None, exc.error_type, str(exc))

    if is_relevance(category):
        return _relevance(category, contains_call=not bfcl.is_empty_output(decoded), decoded=decoded)
    if not bfcl.is_function_calling_format_output(decoded):
        return _result(False, decoded, WRONG_OUTPUT_FORMAT, "decoded output is not a list of {name: {args}}")
    checked = bfcl.ast_checker(example.scoring_entry["function"], decoded, example.ground_truth,
                               _LANGUAGE[language_of(category)], category, CHECKER_MODEL_NAME)
    return _result(checked["valid"], decoded, checked.get("error_type"), checked.get("error"))


def _relevance(category: str, contains_call: bool, decoded, error=None) -> dict:
    # bfcl: irrelevance is correct when there is no call; relevance when there is one.
    if "irrelevance" in category:
        if contains_call:
            return _result(False, decoded, "irrelevance_error:decoder_success",
                           "Valid syntax. Successfully decode AST when it should not.")
        return _result(True, decoded)
    if not contains_call:
        return _result(False, decoded, "relevance_error:decoder_failed",
                       f"Invalid syntax. Failed to decode AST when it should have. {error or ''}".strip())
    return _result(True, decoded)


def allowed_api_names(entry: dict) -> set[str]:
    """Methods a multi-turn entry may call: every offered function, held-out ones included."""
    names = {f["name"] for f in entry["function"]}
    for docs in entry.get("missed_function", {}).values():
        names.update(d["name"] if isinstance(d, dict) else d for d in docs)
    return names


def decode_step(raw: str, allowed: set[str], parser=None) -> list[str]:
    """One multi-turn step's text -> safe execution strings (empty when nothing usable was called)."""
    try:
        calls, _refused = to_execution_calls(parser(raw, "python") if parser else decode_python(raw), allowed)
    except DecodeError:
        return []
    return calls


def score_multi_turn(example: Example, raw_turns, parser=None) -> dict:
    ground_truth = example.ground_truth
    if not isinstance(raw_turns, list):
        return _result(False, None, "multi_turn:inference_error", "model result is not a list of turns")
    allowed = allowed_api_names(example.scoring_entry)
    decoded = [[calls for step in turn if (calls := decode_step(step, allowed, parser))] for turn in raw_turns]
    if len(raw_turns) != len(ground_truth):
        return _result(False, decoded, "multi_turn:force_terminated",
                       f"{len(raw_turns)} turns answered, {len(ground_truth)} expected")
    # A fresh name per call: bfcl caches API instances in module globals keyed by model name and entry id.
    checker_name = f"tinyllm_score_{uuid.uuid4().hex[:12]}"
    try:
        checked = bfcl.multi_turn_checker(decoded, ground_truth, example.scoring_entry, example.category, checker_name)
    finally:
        bfcl.clear_api_state(checker_name)
    return _result(checked["valid"], decoded, checked.get("error_type"), checked.get("error_message"))


def score_example(example: Example, raw, parser=None) -> dict:
    if is_multi_turn(example.category):
        return score_multi_turn(example, raw, parser)
    return score_single_turn(example, raw, parser)


FAILURE_MODES = ("correct", "no call", "unparseable", "wrong function", "wrong arguments", "wrong execution")


def failure_mode(prediction: dict) -> str:
    """Coarse failure mode of one saved prediction, from bfcl's error kind (for the baseline's breakdown)."""
    if prediction["valid"]:
        return "correct"
    error_type = prediction.get("error_type") or ""
    raw = prediction.get("raw")
    if error_type == "relevance_error:decoder_failed" or error_type.startswith("inference:") \
            or error_type in ("multi_turn:empty_turn_model_response", "multi_turn:force_terminated") \
            or prediction.get("decoded") == []:
        return "no call"
    if error_type.startswith("ast_decoder:"):
        return "unparseable" if isinstance(raw, str) and "(" in raw else "no call"
    if "irrelevance_error" in error_type or error_type.endswith(("wrong_func_name", "wrong_count")):
        return "wrong function"
    if error_type.startswith("multi_turn:"):
        return "wrong execution"
    return "wrong arguments"  # missing/unexpected parameters, wrong types or values, no matching call
