"""How each model family is prompted and how its output becomes calls, the way BFCL scores that family.

bfcl-eval's local-inference handlers (`bfcl_eval/model_handler/local_inference/`) write each family's chat
template out in `_format_prompt` and parse its answers in `decode_ast`; they are the source of truth here:
prompts are rendered by calling the handler's own preprocessing and `_format_prompt` (offline, no tokenizer),
multi-turn histories are kept with the handler's own message methods, and FC answers are decoded by the
handler's `decode_ast` where that only runs `json.loads`. Where a handler evaluates model text it is replaced:

* bfcl's prompting-mode decoder (`default_decode_ast_prompting`, used by QwenHandler) `eval`s some argument
  expressions: the study's literal-only `decoding.decode_ast` parses that syntax instead.
* every handler's `decode_execute` feeds strings to bfcl's executor, which `eval`s them (QwenFCHandler's even
  calls `eval` on a non-dict tool call itself): multi-turn calls are re-serialized from the safe parse
  (`decoding.to_execution_calls`, allow-listed names, `repr` of literals) instead.

A registry entry names its `family` (a key of FAMILIES), `mode` (prompting: BFCL's system prompt and Python
call syntax; fc: the functions rendered as the family's tools, answers in its own tool-call syntax),
`reasoning` (none | strip_think | disable_thinking) and a pinned hub `revision`.

Training uses the same renderer (`training_prompt`, `training_example`): a family's rows, pairs and GRPO prompts
are its evaluation prompts, answered in its own syntax (TARGETS) and ended with its end of turn.

    python -c "from tinyllm_utils.models.dry_run import dry_run; print(dry_run('Salesforce/xLAM-2-1b-fc-r'))"
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace
from typing import Callable

from tinyllm_utils.bfcl.decoding import WRONG_OUTPUT_FORMAT, DecodeError, UnsafeOutputError
from tinyllm_utils.models.prompts import first_turn_messages, format_prompt


@dataclass(frozen=True)
class Family:
    key: str
    mode: str  # prompting | fc
    render: str  # gemma (the study's Gemma turns) | chat_template (the tokenizer's) | handler (bfcl's _format_prompt)
    handler: str | None  # bfcl local-inference handler, "module.Class"; None when bfcl has none for the family
    parser: str  # a key of PARSERS
    note: str = ""
    # The string that ends the family's assistant turn in its evaluation prompt (and so ends a training answer);
    # None: the tokenizer's EOS (the generic chat-template path, e.g. TinyLlama's `</s>`).
    end_of_turn: str | None = None


FAMILIES = {
    "gemma": Family("gemma", "prompting", "gemma", "gemma.GemmaHandler", "python_ast",
                    "bfcl's GemmaHandler turns without its duplicated <bos>; the model's replies as `model` turns",
                    end_of_turn="<end_of_turn>"),
    "generic": Family("generic", "prompting", "chat_template", None, "python_ast",
                      "thin path for any hub id or checkpoint: BFCL's system prompt in the tokenizer's chat template"),
    "qwen": Family("qwen", "prompting", "handler", "qwen.QwenHandler", "python_ast",
                   "BFCL's system prompt in Qwen's ChatML; Python call list", end_of_turn="<|im_end|>"),
    "qwen_fc": Family("qwen_fc", "fc", "handler", "qwen_fc.QwenFCHandler", "qwen_tool_call",
                      "functions as <tools>; answers as <tool_call>{json}</tool_call> blocks", end_of_turn="<|im_end|>"),
    "xlam": Family("xlam", "fc", "handler", "salesforce_qwen.SalesforceQwenHandler", "xlam_json",
                   "xLAM-2 on Qwen2.5 (1b, 3b): xLAM's tool system prompt; answers as one JSON list",
                   end_of_turn="<|im_end|>"),
    "xlam_llama": Family("xlam_llama", "fc", "handler", "salesforce_llama.SalesforceLlamaHandler", "xlam_json",
                         "xLAM-2 on Llama 3.1 (8b, 70b): as xlam with Llama 3 headers", end_of_turn="<|eot_id|>"),
}
REASONING = ("none", "strip_think", "disable_thinking")
THINKING_FAMILIES = {"qwen", "qwen_fc"}  # bfcl's Qwen handlers split the answer at </think>
# Qwen3's chat template with enable_thinking=False: an empty reasoning block after the generation prompt.
EMPTY_THINK = "<think>\n\n</think>\n\n"
# bfcl's handlers write the BOS token into the prompt; the study's prompts leave it to the tokenizer.
_BOS_STRINGS = ("<|begin_of_text|>", "<bos>")


def family_of(spec) -> Family:
    try:
        return FAMILIES[spec.family]
    except KeyError:
        raise ValueError(f"model {spec.name!r}: unknown family {spec.family!r}; "
                         f"expected one of {list(FAMILIES)}") from None


def check_spec(spec) -> None:
    """Refuse registry entries whose mode, family and reasoning do not fit together."""
    family = family_of(spec)
    if spec.mode != family.mode:
        raise ValueError(f"model {spec.name!r}: family {family.key!r} is {family.mode} mode, "
                         f"the entry says {spec.mode!r}")
    if spec.reasoning not in REASONING:
        raise ValueError(f"model {spec.name!r}: reasoning {spec.reasoning!r} is not one of {REASONING}")
    if spec.reasoning != "none" and family.key not in THINKING_FAMILIES:
        raise ValueError(f"model {spec.name!r}: reasoning {spec.reasoning!r} needs a thinking family "
                         f"({sorted(THINKING_FAMILIES)}), not {family.key!r}")
    if (family.render == "gemma") != (spec.prompt_format == "gemma"):
        raise ValueError(f"model {spec.name!r}: family {family.key!r} does not match "
                         f"prompt_format {spec.prompt_format!r}")


@cache
def handler(name: str, model_name: str = "tinyllm"):
    """One shared bfcl handler instance per (handler, model): used only for formatting and decoding."""
    from tinyllm_utils.bfcl import shim as bfcl

    is_fc = any(f.handler == name and f.mode == "fc" for f in FAMILIES.values())
    return bfcl.local_inference_handler(name, model_name=model_name, is_fc_model=is_fc)


def _handler_of(spec):
    family = family_of(spec)
    if family.handler is None:
        raise ValueError(f"family {family.key!r} has no bfcl handler")
    return handler(family.handler, spec.hf_id or spec.name)


def _completion(text: str):
    """`text` shaped as the OpenAI completion a handler's `_parse_query_response_prompting` reads."""
    return SimpleNamespace(choices=[SimpleNamespace(text=text)],
                           usage=SimpleNamespace(prompt_tokens=0, completion_tokens=0))


# --- prompts ----------------------------------------------------------------------------------------------

def _finish(prompt: str, spec) -> str:
    for bos in _BOS_STRINGS:
        if prompt.startswith(bos):
            prompt = prompt[len(bos):]
            break
    if spec.reasoning == "disable_thinking":
        prompt += EMPTY_THINK
    return prompt


def handler_prompt(entry: dict, spec) -> str:
    """The first-turn prompt exactly as the family's bfcl handler builds it (BOS left to the tokenizer)."""
    chat = HandlerConversation(entry, spec)
    chat.add_user(chat.turns[0])
    return chat.prompt()


def entry_prompt(entry: dict, spec, tokenizer=None) -> str:
    """The first-turn prompt of a BFCL entry for a model (a registry.ModelSpec): what every evaluation caller
    uses. FC and family-specific models are rendered by their bfcl handler, the rest by `prompts.format_prompt`
    with the Gemma turns or the tokenizer's chat template."""
    family = family_of(spec)
    if family.render == "handler":
        return handler_prompt(entry, spec)
    return format_prompt(first_turn_messages(entry)[0], spec.prompt_format, tokenizer)


# --- parsers ----------------------------------------------------------------------------------------------


class CallShapeError(UnsafeOutputError):
    """Decoded, but not `[{name: {arg: value}}]`: wrong for AST categories, never executed; for relevance a call
    where bfcl's `is_empty_output` finds one in what its decoder returned (`bfcl_decodes`)."""

    error_type = WRONG_OUTPUT_FORMAT

    def __init__(self, message: str, calls):
        from tinyllm_utils.bfcl import shim as bfcl

        super().__init__(message)
        self.bfcl_decodes = not bfcl.is_empty_output(calls)


def _checked(calls) -> list[dict]:
    if not isinstance(calls, list):
        raise CallShapeError(f"decoded output is a {type(calls).__name__}, not a list of calls", calls)
    for call in calls:
        if not (isinstance(call, dict) and len(call) == 1):
            raise CallShapeError(f"decoded call is not a one-key dict: {call!r:.200}", calls)
        (name, args), = call.items()
        if not isinstance(name, str) or not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise CallShapeError(f"decoded call is not {{name: {{arg: value}}}}: {call!r:.200}", calls)
    return calls


def _handler_decoder(handler_name: str) -> Callable[[str, str], list[dict]]:
    """A handler's `decode_ast`, for handlers whose decoding is `json.loads` and dict lookups only."""

    def decode(text: str, language: str = "python") -> list[dict]:
        if not isinstance(text, str):
            raise DecodeError(f"model output is {type(text).__name__}, not text")
        try:
            calls = handler(handler_name).decode_ast(text, language, False)
        except Exception as exc:  # JSONDecodeError, KeyError, TypeError, RecursionError on hostile text
            raise DecodeError(f"not {handler_name.split('.')[1]} tool-call syntax: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
        return _checked(calls)

    return decode


def _python_ast(text: str, language: str = "python") -> list[dict]:
    from tinyllm_utils.bfcl.decoding import decode_ast

    return decode_ast(text, language)


PARSERS: dict[str, Callable[[str, str], list[dict]]] = {
    "python_ast": _python_ast,  # replaces bfcl's default_decode_ast_prompting (which evals some expressions)
    "xlam_json": _handler_decoder("salesforce_qwen.SalesforceQwenHandler"),
    "qwen_tool_call": _handler_decoder("qwen_fc.QwenFCHandler"),
}
PARSER_SOURCES = {
    "python_ast": "tinyllm_utils.bfcl.decoding.decode_ast (literal-only ast; bfcl's prompting decoder evals, replaced)",
    "xlam_json": "bfcl SalesforceQwenHandler.decode_ast (json.loads of the JSON call list)",
    "qwen_tool_call": "bfcl QwenFCHandler.decode_ast (json.loads of each <tool_call> block)",
}


def strip_think(text: str) -> str:
    """The answer after Qwen3's reasoning, split exactly as bfcl's Qwen handlers do; unfinished reasoning
    (the token cap hit inside <think>) is a DecodeError naming the cause."""
    answer = handler("qwen.QwenHandler")._parse_query_response_prompting(_completion(text))["model_responses"]
    if "<think>" in answer and "</think>" not in answer:
        raise DecodeError("reasoning not finished (<think> without </think>): raise max_new_tokens "
                          "(bfcl allows up to 4096 new tokens)")
    return answer


def parser_name(spec) -> str:
    """The parser id recorded in run.json; `parser_by_name` turns it back into the function (for --rescore)."""
    base = family_of(spec).parser
    return f"strip_think+{base}" if spec.reasoning == "strip_think" else base


def parser_by_name(name: str) -> Callable[[str, str], list[dict]]:
    strip, _, base = name.rpartition("+")
    if base not in PARSERS or strip not in ("", "strip_think"):
        raise ValueError(f"unknown parser {name!r}; expected [strip_think+]{'|'.join(PARSERS)}")
    decode = PARSERS[base]
    if not strip:
        return decode

    def decode_after_reasoning(text: str, language: str = "python") -> list[dict]:
        if not isinstance(text, str):
            raise DecodeError(f"model output is {type(text).__name__}, not text")
        return decode(strip_think(text), language)

    return decode_after_reasoning


def parser_for(spec) -> Callable[[str, str], list[dict]]:
    """`parser(raw_text, language) -> [{name: {arg: value}}]`, raising DecodeError; what scoring applies."""
    return parser_by_name(parser_name(spec))


def raw_answer_is_call_list(spec) -> bool:
    """The raw text itself is a Python call list from its first token: what the hopeless-text early stop and the
    call-list grammar assume."""
    return family_of(spec).parser == "python_ast" and spec.reasoning != "strip_think"


def scoring_path(spec) -> str:
    """One line for run.json: which mode, prompt renderer and parser produced the numbers."""
    family = family_of(spec)
    if family.render == "handler":
        renderer = f"bfcl {family.handler.split('.')[1]}._format_prompt"
    else:
        renderer = {"gemma": "tinyllm Gemma turns (bfcl GemmaHandler layout)",
                    "chat_template": "the tokenizer's chat template"}[family.render]
    return (f"{spec.mode} mode, family {family.key}: prompt by {renderer}; reasoning {spec.reasoning}; "
            f"parser {parser_name(spec)} = {PARSER_SOURCES[family.parser]}")


# --- training: the same renderer as evaluation, the answer in the family's own syntax -------------------

# What a trained answer is, per parser (the registry's `family` picks it; `python -m
# tinyllm_utils.models.dry_run` and the paper profile's --show print it per model).
TARGETS = {
    "python_ast": "Python call list `[f(a=1)]`; prose when no function fits",
    "xlam_json": 'one JSON list `[{"name": ..., "arguments": {...}}]` (json.dumps, as bfcl renders xLAM\'s calls); '
                 "prose when no function fits",
    "qwen_tool_call": '`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks joined by newlines, '
                      "as bfcl's QwenFCHandler renders a call; prose when no function fits",
}
# Qwen3's own template renders the last assistant turn without reasoning as an empty think block; the strip_think
# parser splits there, exactly as it splits a real reasoning trace, so the trained answer is scored unchanged.
EMPTY_REASONING = "<think>\n\n</think>\n\n"


def spec_of(spec_or_format):
    """A registry.ModelSpec, or a bare prompt format ('gemma' | 'chat_template') as the thin spec the rows of
    earlier callers meant (Gemma turns or the tokenizer's chat template, Python call answers)."""
    if not isinstance(spec_or_format, str):
        return spec_or_format
    if spec_or_format not in ("gemma", "chat_template"):
        raise ValueError(f"unknown prompt_format {spec_or_format!r}; expected 'gemma', 'chat_template' or a ModelSpec")
    # the fields the renderers read (the registry imports this module, so no ModelSpec here)
    return SimpleNamespace(name=f"{spec_or_format}-rows", prompt_format=spec_or_format, mode="prompting",
                           family="gemma" if spec_or_format == "gemma" else "generic", reasoning="none", hf_id=None)


def family_answer(calls: list[dict], spec) -> str:
    """`[{name: {arg: value}}]` as the text the family's parser reads back to these calls (no end marker, no
    reasoning block): the answer a trained model should write."""
    from tinyllm_utils.models.prompts import NO_CALL_ANSWER, render_calls

    parser = family_of(spec).parser
    if not calls:
        return NO_CALL_ANSWER
    if parser == "python_ast":
        return render_calls(calls)
    flat = [{"name": name, "arguments": args} for call in calls for name, args in call.items()]
    if parser == "xlam_json":
        return json.dumps(flat)
    if parser == "qwen_tool_call":
        return "\n".join('<tool_call>\n{"name": "' + c["name"] + '", "arguments": ' + json.dumps(c["arguments"])
                         + "}\n</tool_call>" for c in flat)
    raise ValueError(f"family {family_of(spec).key!r}: no training target for parser {parser!r}")


def as_family_answer(text: str, spec) -> str:
    """Python call text (stage 02's targets, stage 03's pairs, converted chat histories) in the family's syntax;
    text that is not a call list (prose, a broken call) is kept: it is wrong or a no-call answer in every syntax."""
    from tinyllm_utils.bfcl.decoding import decode_ast

    if family_of(spec).parser == "python_ast":
        return text
    try:
        return family_answer(decode_ast(text, "python"), spec)
    except (DecodeError, TypeError, ValueError):  # not a call list, or values JSON cannot carry
        return text


def canonical_answer(text: str, spec) -> str:
    """A model's raw answer in its family's syntax as Python call text (what stage 03 stores, verifies and later
    renders again for the policy, `as_family_answer`); reasoning is split off as its parser does, prose kept."""
    from tinyllm_utils.models.prompts import render_calls

    answer = text
    if spec.reasoning == "strip_think":
        try:
            answer = strip_think(text)
        except DecodeError:  # unfinished reasoning: no answer at all, wrong in any syntax
            return text
    parser = family_of(spec).parser
    if parser == "python_ast":
        return answer
    try:
        calls = PARSERS[parser](answer, "python")
    except DecodeError:
        return answer
    return render_calls(calls) if calls else answer


def end_of_turn(spec, tokenizer=None) -> str:
    """What ends an answer: the family's end-of-turn string, else the tokenizer's EOS."""
    marker = family_of(spec).end_of_turn
    return marker if marker is not None else (getattr(tokenizer, "eos_token", "") or "")


def completion_for(answer: str, spec, tokenizer=None) -> str:
    """A training completion: [Qwen3's empty reasoning block] + the answer (already in the family's syntax) + the
    end of the turn, the text the evaluation prompt is continued with."""
    prefix = EMPTY_REASONING if spec.reasoning == "strip_think" else ""
    return prefix + answer + end_of_turn(spec, tokenizer)


def training_prompt(entry: dict, spec, tokenizer=None) -> str:
    """A training row's prompt by the function that renders its evaluation prompt (`entry_prompt`): for a
    one-turn row the same text; a row whose messages hold earlier answers and tool results (a converted chat) is
    replayed through the evaluation's multi-turn chat state (`conversation`), its earlier answers written in the
    family's syntax, so a handler family sees its history as its bfcl handler keeps it."""
    family = family_of(spec)
    if family.render != "handler":
        return format_prompt(first_turn_messages(entry)[0], spec.prompt_format, tokenizer)
    chat = HandlerConversation(entry, spec)
    messages, pending, i = chat.turns[0], [], 0
    while i < len(messages):
        if messages[i]["role"] != "assistant":
            pending.append(messages[i])
            i += 1
            continue
        if pending:
            chat.add_user(pending)
            pending = []
        try:
            chat.add_reply(as_family_answer(messages[i]["content"], spec))
        except DecodeError:  # history text without calls: recorded all the same
            pass
        i += 1
        results = []
        while i < len(messages) and messages[i]["role"] == "tool":
            results.append(messages[i])
            i += 1
        if results:
            chat.add_results([m.get("name", "") for m in results], [m["content"] for m in results])
    if pending:
        chat.add_user(pending)
    return chat.prompt()


def training_example(entry: dict, answer: str, spec, tokenizer=None) -> dict:
    """(prompt, completion) for SFT rows and DPO pairs: the evaluation prompt and the answer in the family's
    syntax (`answer` is Python call text or prose, as stage 02 and 03 store them)."""
    return {"prompt": training_prompt(entry, spec, tokenizer),
            "completion": completion_for(as_family_answer(answer, spec), spec, tokenizer)}


def training_path(spec) -> str:
    """One line: how rows for this model are rendered and what its answers look like."""
    family = family_of(spec)
    renderer = (f"bfcl {family.handler.split('.')[1]}._format_prompt" if family.render == "handler" else
                {"gemma": "tinyllm Gemma turns", "chat_template": "the tokenizer's chat template"}[family.render])
    thinking = ("; an empty <think></think> block before it (Qwen3's template for an answer without reasoning; "
                "the strip_think parser splits there)" if spec.reasoning == "strip_think" else
                "; after the prompt's empty think block" if spec.reasoning == "disable_thinking" else "")
    marker = family.end_of_turn or "the tokenizer's EOS"
    return (f"prompt by {renderer} (= the evaluation prompt); target {TARGETS[family.parser]}{thinking}; "
            f"ends with {marker}; GRPO reward and pair checks parse with {parser_name(spec)}")


# --- multi-turn conversations -----------------------------------------------------------------------------

class PlainConversation:
    """The study's prompting-mode chat: BFCL's system prompt folded into the first turn, replies as assistant
    messages, each execution result as a `tool` message (the Gemma / chat-template path)."""

    def __init__(self, entry: dict, prompt_format: str, tokenizer=None, parse=None):
        self.turns = first_turn_messages(entry)
        self.prompt_format, self.tokenizer = prompt_format, tokenizer
        self.parse = parse or PARSERS["python_ast"]
        self.messages: list[dict] = []

    def add_user(self, messages: list[dict]) -> None:
        self.messages.extend(messages)

    def prompt(self) -> str:
        return format_prompt(self.messages, self.prompt_format, self.tokenizer)

    def add_reply(self, text: str) -> list[dict]:
        """Record the model's reply; return its decoded calls (DecodeError when it holds none)."""
        self.messages.append({"role": "assistant", "content": text})
        return self.parse(text, "python")

    def add_results(self, calls: list[str], results: list[str]) -> None:
        for call, result in zip(calls, results):
            self.messages.append({"role": "tool", "name": call, "content": result})


class HandlerConversation:
    """A chat kept the way the family's bfcl handler keeps it in `inference_multi_turn_prompting`: its own
    preprocessing (system prompt or none), its assistant messages (Qwen FC: parsed `tool_calls`, reasoning
    kept apart) and its tool-result messages, rendered by its `_format_prompt`."""

    def __init__(self, entry: dict, spec):
        self.spec, self.handler = spec, _handler_of(spec)
        self.entry = copy.deepcopy(entry)  # the handler's preprocessing edits the entry in place
        self.data = self.handler._pre_query_processing_prompting(self.entry)
        self.turns = self.entry["question"]
        self.parse = parser_for(spec)
        self._started, self._last = False, None

    def add_user(self, messages: list[dict]) -> None:
        if self._started:
            self.data = self.handler._add_next_turn_user_message_prompting(self.data, messages)
        else:
            self.data = self.handler.add_first_turn_message_prompting(self.data, messages)
            self._started = True

    def prompt(self) -> str:
        return _finish(self.handler._format_prompt(self.data["message"], self.data["function"]), self.spec)

    def add_reply(self, text: str) -> list[dict]:
        self._last = self.handler._parse_query_response_prompting(_completion(text))
        self.data = self.handler._add_assistant_message_prompting(self.data, self._last)
        return self.parse(text, "python")

    def add_results(self, calls: list[str], results: list[str]) -> None:
        self._last["model_responses_decoded"] = calls
        self.data = self.handler._add_execution_results_prompting(self.data, results, self._last)


def conversation(entry: dict, spec, tokenizer=None):
    """The chat state for one multi-turn entry: the family handler's when it has one, else the plain one."""
    family = family_of(spec)
    if family.render == "handler":
        return HandlerConversation(entry, spec)
    return PlainConversation(entry, spec.prompt_format, tokenizer, parser_for(spec))
