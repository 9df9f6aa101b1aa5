"""The two backends on the embedded gemma-3-270m: deterministic, same prompt rules, batching changes nothing."""

import pytest

from tinyllm_utils.backends.hf import TransformersBackend
from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.decoding import cannot_become_calls
from tinyllm_utils.models.prompts import first_turn_messages, format_prompt
from tinyllm_utils.models.registry import ModelUnavailableError, resolve_model

GEMMA = resolve_model("gemma-3-270m")


def prompts(n=3):
    examples = load_category("simple_python", n, seed=11) + load_category("live_simple", 1, seed=11)
    return [format_prompt(first_turn_messages(e.entry)[0], "gemma") for e in examples]


@pytest.fixture(scope="module")
def llama():
    return LlamaCppBackend(GEMMA, max_new_tokens=24, n_ctx=4096)


@pytest.mark.slow
def test_llama_cpp_is_deterministic_and_capped(llama):
    first, second = llama.generate(prompts()), llama.generate(prompts())
    assert [g.text for g in first] == [g.text for g in second]
    assert all(0 < g.completion_tokens <= 24 and g.prompt_tokens > 100 for g in first)


@pytest.mark.slow
def test_stop_when_hopeless_only_cuts_hopeless_text(llama):
    full = llama.generate(prompts(2))
    early = llama.generate(prompts(2), stop_when_hopeless=True)
    for f, e in zip(full, early):
        assert f.text.startswith(e.text.rstrip())
        assert e.completion_tokens <= f.completion_tokens
        if e.stopped_early:
            assert cannot_become_calls(e.text)
        else:
            assert e.text == f.text


def test_too_long_prompt_is_reported_not_crashed():
    backend = LlamaCppBackend(GEMMA, max_new_tokens=8, n_ctx=256)
    (generation,) = backend.generate([prompts(1)[0]])
    assert generation.error == "inference:prompt_too_long" and generation.text == ""


@pytest.mark.slow
def test_transformers_batched_equals_one_by_one_and_has_one_bos():
    backend = TransformersBackend(GEMMA, max_new_tokens=12, batch_size=4)
    texts = prompts()
    ids = backend.tokenize(texts[0])
    assert ids[0] == backend.tokenizer.bos_token_id and ids.count(backend.tokenizer.bos_token_id) == 1
    batched = backend.generate(texts)
    backend.batch_size = 1
    single = backend.generate(texts)
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.completion_tokens <= 12 for g in batched)
    # a checkpoint's generation_config never changes greedy decoding (the other backends ignore it too)
    backend.model.generation_config.repetition_penalty = 3.0
    backend.model.generation_config.no_repeat_ngram_size = 2
    backend.model.generation_config.min_new_tokens = 12  # would hold off the end of turn
    assert [g.text for g in backend.generate(texts)] == [g.text for g in single]


def test_missing_hub_model_is_one_clear_error():
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache"):
        TransformersBackend(resolve_model("xlam-2-1b-fc-r"))
    with pytest.raises(ModelUnavailableError, match="has no GGUF file"):
        LlamaCppBackend(resolve_model("qwen3-0.6b"))
    with pytest.raises(ModelUnavailableError, match="unknown model 'gpt-5'"):
        resolve_model("gpt-5")
    unlisted = resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")  # any hub id, same thin path
    assert (unlisted.source, unlisted.prompt_format) == ("hub", "chat_template")
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache"):
        TransformersBackend(unlisted)


def test_a_gguf_without_a_spec_is_prompted_as_gemma_only_when_it_is_gemma(tmp_path, monkeypatch):
    from tinyllm_utils.models import registry

    embedded = resolve_model("gemma-3-270m").gguf_path()
    copy = tmp_path / "my-gemma.gguf"
    copy.symlink_to(embedded)
    assert (resolve_model(str(copy)).prompt_format, registry.gguf_architecture(str(embedded))) == ("gemma", "gemma3")
    monkeypatch.setattr(registry, "gguf_architecture", lambda path: "qwen2")
    with pytest.raises(ModelUnavailableError, match="a 'qwen2' GGUF without a model_spec.json"):
        resolve_model(str(copy))


@pytest.fixture(scope="module")
def batched():
    return LlamaCppBackend(GEMMA, max_new_tokens=16, n_ctx=4096, parallel=4, parallel_ctx=2048)


@pytest.mark.slow
def test_batched_answer_does_not_depend_on_its_batch_mates(batched):
    texts = prompts(3) + [prompts(1)[0].replace("simple", "plain")]
    together = [g.text for g in batched.generate(texts)]
    alone = [batched.generate([t])[0].text for t in texts]
    reversed_ = [g.text for g in batched.generate(texts[::-1])][::-1]
    assert together == alone == reversed_
    assert all(g.completion_tokens <= 16 for g in batched.generate(texts))


@pytest.mark.slow
def test_decline_bias_moves_only_the_first_token_and_matches_the_margin(batched):
    from tinyllm_utils.models.prompts import NO_CALL_ANSWER

    texts = prompts(2)
    margins = batched.decline_margins(texts)
    for bias, declines in ((1e4, True), (-1e4, False)):
        batched.decline_bias = bias
        for seq in (batched, LlamaCppBackend(GEMMA, max_new_tokens=16, n_ctx=4096, decline_bias=bias)):
            for generation in seq.generate(texts):
                first_word = NO_CALL_ANSWER.split()[0]
                assert generation.text.startswith(first_word) == declines
    batched.decline_bias = None
    # greedy declines exactly where the margin is negative (the no-call token is the top one)
    plain = batched.generate(texts)
    assert [g.text.startswith(NO_CALL_ANSWER.split()[0]) for g in plain] == [m < 0 for m in margins]
