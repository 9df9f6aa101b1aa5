"""One prompt formatter for evaluation, SFT rows and DPO pairs.

Messages follow bfcl's prompting mode: BFCL's default system prompt (built by bfcl-eval from the offered
functions, never retyped here) is prepended to the first turn, and consecutive user messages are merged.
`format_prompt` renders messages as text *without* a BOS token; each backend's tokenizer adds exactly one.
"""

from __future__ import annotations

import copy

from tinyllm_utils.bfcl import shim as bfcl


def first_turn_messages(entry: dict) -> list[list[dict]]:
    """The entry's turns with BFCL's system prompt folded in, as bfcl's prompting handlers prepare them.

    Returns a list of turns (single-turn entries have one); the input entry is not modified.
    """
    turns = copy.deepcopy(entry["question"])
    turns[0] = bfcl.system_prompt_pre_processing_chat_model(turns[0], entry["function"], entry["id"])
    return [bfcl.combine_consecutive_user_prompts(turn) for turn in turns]


def format_gemma(messages: list[dict]) -> str:
    """Gemma turns as in bfcl's GemmaHandler: the system prompt is folded into the first user turn.

    Differences from bfcl, on purpose: no leading "<bos>" (the tokenizer adds it; bfcl's text plus the
    tokenizer's BOS would give two), and the assistant role is written `model`, as Gemma's own chat template
    does (bfcl renames it only for messages in the dataset, not for the model's own replies).
    """
    prefix = ""
    if messages and messages[0]["role"] == "system":
        prefix = messages[0]["content"].strip() + "\n\n"
        messages = messages[1:]
    parts = []
    for i, message in enumerate(messages):
        role = "model" if message["role"] == "assistant" else message["role"]
        content = (prefix if i == 0 else "") + message["content"].strip()
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


def format_prompt(messages: list[dict], prompt_format: str, tokenizer=None) -> str:
    """Render messages for generation. `prompt_format` is `gemma` or `chat_template` (the tokenizer's)."""
    if prompt_format == "gemma":
        return format_gemma(messages)
    if prompt_format == "chat_template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_format 'chat_template' needs a tokenizer that has a chat template")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        return text[len(bos):] if bos and text.startswith(bos) else text
    raise ValueError(f"unknown prompt_format {prompt_format!r}; expected 'gemma' or 'chat_template'")



def format_example(messages: list[dict], completion: str, prompt_format: str, tokenizer=None) -> dict:
    """A (prompt, completion) pair in exactly the evaluation format, for SFT rows and DPO pairs."""
    end = "<end_of_turn>" if prompt_format == "gemma" else (getattr(tokenizer, "eos_token", "") or "")
    return {"prompt": format_prompt(messages, prompt_format, tokenizer), "completion": completion + end}


# BFCL's system prompt asks the model to "point it out" when no function fits; a sentence with no call syntax.
NO_CALL_ANSWER = "None of the provided functions can answer this request."


def render_calls(calls: list[dict]) -> str:
    """`[{name: {arg: value}}]` as the Python call list the evaluation expects: `[f(a=1), g(b='x')]`."""
    rendered = []
    for call in calls:
        for name, args in call.items():
            rendered.append(f"{name}(" + ", ".join(f"{arg}={value!r}" for arg, value in args.items()) + ")")
    return "[" + ", ".join(rendered) + "]"


def answer_text(calls: list[dict]) -> str:
    """The reference completion for a target: its call list, or the no-call sentence when it is empty."""
    return render_calls(calls) if calls else NO_CALL_ANSWER
