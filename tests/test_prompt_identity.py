"""Training prompts equal evaluation prompts, token for token.

A stage-02 row made from a BFCL entry must render (row -> row_entry -> prompt) to exactly the token ids
evaluate.py feeds the model for that entry: the docs carry bfcl's language hint in both, and the checker
still scores the unhinted docs. Covers SFT rows (prompt_of), the stage-02 length filter, DPO pairs
(pairs.to_preference_dataset) and row_example (what GRPO rewards and stage 03 score with).
"""

import json

import pytest

from tinyllm_utils.bfcl import shim as bfcl
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.data import pairs
from tinyllm_utils.data.rows import apply_length_limits, possible_answer_as_calls, prompt_of, row_entry, row_example
from tinyllm_utils.models.prompts import first_turn_messages, format_prompt
from tinyllm_utils.models.registry import resolve_model

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]
HINT = " Note that the provided function is in Python 3 syntax."
# A small Gemma-style chat template: the tokenizer's own template is what `chat_template` models use.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
            "else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
            "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _examples():
    return [e for category in CATEGORIES for e in load_category(category, limit=3, seed=5)]


def _saved_row(example) -> dict:
    """The row stage 02 would save for this entry: JSON columns, docs as the dataset stores them (unhinted)."""
    return {"id": example.id, "category": example.category, "source": "bfcl",
            "messages": json.dumps(example.scoring_entry["question"][0]),
            "functions": json.dumps(example.scoring_entry["function"]),
            "target": json.dumps(possible_answer_as_calls(example.ground_truth or [])), "augmentation": ""}


def _stage_row(example) -> dict:
    """The same row while it moves through stage 02 (structures, not JSON)."""
    row = _saved_row(example)
    return {**row, **{k: json.loads(row[k]) for k in ("messages", "functions", "target")}}


def _evaluation_prompt(example, prompt_format, tokenizer=None) -> str:
    return format_prompt(first_turn_messages(example.entry)[0], prompt_format, tokenizer)  # as evaluate.py does


@pytest.fixture(scope="module")
def gemma_ids():
    from llama_cpp import Llama

    vocab = Llama(model_path=str(resolve_model("gemma-3-270m").gguf_path()), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode(), add_bos=True, special=True)  # LlamaCppBackend.tokenize


@pytest.fixture(scope="module")
def chat_tokenizer():
    """The real gemma-3-270m tokenizer (tests/tiny_model.py, shared) given a chat template for these tests."""
    from tiny_model import gemma_tokenizer

    tokenizer = gemma_tokenizer()
    before, tokenizer.chat_template = tokenizer.chat_template, TEMPLATE
    yield tokenizer
    tokenizer.chat_template = before


def test_row_entry_applies_bfcl_hint_exactly_as_evaluation():
    for example in _examples():
        for row in (_saved_row(example), _stage_row(example)):
            assert row_entry(row)["function"] == example.entry["function"]
            scored = row_example(row)
            assert scored.entry["function"] == example.entry["function"]
            assert scored.scoring_entry["function"] == example.scoring_entry["function"]  # checker: no hint
            assert all(doc["description"].endswith(HINT) for doc in row_entry(row)["function"])
    assert bfcl.add_python_hint([]) == []


def test_gemma_rows_tokenize_like_evaluation(gemma_ids):
    examples = _examples()
    assert {e.category for e in examples} == set(CATEGORIES)
    for example in examples:
        expected = gemma_ids(_evaluation_prompt(example, "gemma"))
        for row in (_saved_row(example), _stage_row(example)):
            assert gemma_ids(prompt_of(row, "gemma")) == expected, example.id
        # without the hint the ids differ: the test can tell the two paths apart
        unhinted = format_prompt(first_turn_messages(example.scoring_entry)[0], "gemma")
        assert gemma_ids(unhinted) != expected


def test_chat_template_rows_tokenize_like_evaluation(chat_tokenizer):
    for example in _examples():
        expected = chat_tokenizer(_evaluation_prompt(example, "chat_template", chat_tokenizer)).input_ids
        assert chat_tokenizer(prompt_of(_saved_row(example), "chat_template", chat_tokenizer)).input_ids == expected


def test_dpo_prompts_and_length_filter_use_the_evaluation_prompt(gemma_ids):
    examples = _examples()
    rows = [_saved_row(e) for e in examples]
    built = [{**row, "pair_id": f"p{i}", "split": "train", "kind": "synthetic", "checker_error": "x",
              "chosen": "[f(a=1)]", "rejected": "[g(b=2)]"} for i, row in enumerate(rows)]
    dataset = pairs.to_preference_dataset(built, "gemma")["train"]
    for example, record in zip(examples, dataset):
        assert gemma_ids(record["prompt"]) == gemma_ids(_evaluation_prompt(example, "gemma"))
    seen = []
    kept, _ = apply_length_limits([_stage_row(e) for e in examples], lambda text: seen.append(text) or 1,
                                  "gemma", None, 10, 10, progress=False)
    assert len(kept) == len(examples)
    assert {_evaluation_prompt(e, "gemma") for e in examples} <= set(seen)
