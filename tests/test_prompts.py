"""Prompt format: BFCL's own system prompt, Gemma turns, exactly one BOS after tokenization."""

import pytest
from bfcl_eval.constants.default_prompts import PROMPT_STYLE_TEMPLATES

from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.models.prompts import first_turn_messages, format_example, format_gemma, format_prompt
from tinyllm_utils.models.registry import resolve_model


def test_system_prompt_comes_from_bfcl_and_is_folded_into_first_user_turn():
    example = load_category("simple_python", 1)[0]
    messages = first_turn_messages(example.entry)[0]
    assert messages[0]["role"] == "system"
    assert PROMPT_STYLE_TEMPLATES["classic"]["persona"] in messages[0]["content"]
    assert example.entry["function"][0]["name"] in messages[0]["content"]
    text = format_gemma(messages)
    assert text.startswith("<start_of_turn>user\n" + PROMPT_STYLE_TEMPLATES["classic"]["persona"])
    assert text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert text.count("<start_of_turn>") == 2 and "<bos>" not in text
    assert example.entry["question"][0][-1]["content"].strip() in text
    assert "system" not in text.split("\n")[0]


def test_entry_is_not_modified():
    example = load_category("simple_python", 1)[0]
    before = repr(example.entry)
    first_turn_messages(example.entry)
    assert repr(example.entry) == before


def test_assistant_turns_are_model_turns():
    text = format_gemma([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "[f()]"},
                         {"role": "tool", "content": "ok"}])
    assert "<start_of_turn>model\n[f()]<end_of_turn>" in text and "<start_of_turn>tool\nok" in text


def test_unknown_format_and_missing_template_are_clear_errors():
    with pytest.raises(ValueError, match="unknown prompt_format"):
        format_prompt([{"role": "user", "content": "x"}], "alpaca")
    with pytest.raises(ValueError, match="chat template"):
        format_prompt([{"role": "user", "content": "x"}], "chat_template", tokenizer=None)


def test_training_rows_use_the_evaluation_prompt():
    messages = [{"role": "user", "content": "hi"}]
    row = format_example(messages, "[f(a=1)]", "gemma")
    assert row["prompt"] == format_prompt(messages, "gemma")
    assert row["completion"] == "[f(a=1)]<end_of_turn>"


def test_llama_cpp_tokenization_has_exactly_one_bos():
    from llama_cpp import Llama

    llm = Llama(model_path=str(resolve_model("gemma-3-270m").gguf_path()), vocab_only=True, verbose=False)
    text = format_gemma(first_turn_messages(load_category("simple_python", 1)[0].entry)[0])
    tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
    assert tokens[0] == llm.token_bos() and tokens.count(llm.token_bos()) == 1
    assert tokens[1] == llm.tokenize(b"<start_of_turn>", add_bos=False, special=True)[0]
