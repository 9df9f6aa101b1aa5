"""The paper's architectures trained as they are scored, offline: tiny random Qwen3 (Qwen3-0.6B), Llama
(TinyLlama, TinyAgent) and Qwen2 (xLAM-2-1b-fc-r) models with small byte-level BPE tokenizers built here, each
carrying its family's special tokens and chat template (tests/fixtures/chat_templates/).

Each architecture goes through SFT, checkpoint and resume, merge, DPO and GRPO from the SFT model, and an
evaluation of the trained folder on the transformers backend; and for every family the token ids of a training
row's prompt (SFT rows, DPO pairs, GRPO prompts) equal its evaluation prompt's. Nothing is downloaded.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_paper_architectures.py -q
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.data import pairs
from tinyllm_utils.data.rows import prompt_of, row_example
from tinyllm_utils.models import families
from tinyllm_utils.models.registry import ModelSpec, resolve_model

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
CATEGORIES = ("simple_python", "multiple", "parallel", "irrelevance")
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=8192)

# architecture -> how the paper's model of it is registered (its family, mode, reasoning) and tokenized
ARCHITECTURES = {
    "qwen3": dict(registry="qwen3-0.6b-fc", template="qwen3.jinja", eos="<|im_end|>", pad="<|endoftext|>",
                  bos=None, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  added=["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]),
    "llama": dict(registry="tinyllama-1.1b-chat", template="tinyllama_zephyr.jinja", eos="</s>", pad=None,
                  bos="<s>", specials=["<unk>", "<s>", "</s>"], added=["<|user|>", "<|assistant|>", "<|system|>"]),
    "qwen2": dict(registry="xlam-2-1b-fc-r", template="chatml.jinja", eos="<|im_end|>", pad="<|endoftext|>",
                  bos=None, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], added=[]),
}
# every family the paper's models use, on the tokenizer of its architecture (prompt identity)
FAMILY_CASES = {"qwen3-0.6b": "qwen3", "qwen3-0.6b-fc": "qwen3", "tinyllama-1.1b-chat": "llama",
                "tinyagent-1.1b": "llama", "xlam-2-1b-fc-r": "qwen2"}


def _rows(per_category: int = 2):
    """Stage-02-shaped rows made from BFCL entries (as tests/test_prompt_identity.py: for tests only)."""
    return pairs.bfcl_rows_as_stage02(CATEGORIES, per_category=per_category, seed=3, splits=("train",))["train"]


def _corpus() -> list[str]:
    """Text the tiny tokenizers learn merges from: the families' rendered prompts and answers."""
    texts = []
    for name in ("qwen3-0.6b", "qwen3-0.6b-fc", "xlam-2-1b-fc-r"):
        spec = resolve_model(name)
        for row in _rows(3):
            texts.append(prompt_of(row, spec))
            texts.append(families.family_answer(json.loads(row["target"]), spec))
    return texts


_CORPUS: list[str] = []


def build_tokenizer(arch: str):
    """A byte-level BPE (< 2000 tokens, no unknown text) with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    info = ARCHITECTURES[arch]
    if not _CORPUS:
        _CORPUS.extend(_corpus())
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=info["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_CORPUS, trainer)
    if info["bos"]:  # Llama's tokenizer puts <s> before every text, as TinyLlama's does
        bos_id = tokenizer.token_to_id(info["bos"])
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{info['bos']} $A",
                                                                 special_tokens=[(info["bos"], bos_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=info["eos"], pad_token=info["pad"], bos_token=info["bos"],
        unk_token="<unk>" if arch == "llama" else None, chat_template=(TEMPLATES / info["template"]).read_text())
    fast.add_tokens(info["added"])  # Qwen keeps <think>, <tool_call> as plain (not special) tokens: they decode
    return fast


def build_tiny(arch: str, folder: Path, registry: str | None = None) -> Path:
    """A seeded tiny model of `arch` and its tokenizer in `folder`, with a model_spec.json registering it like
    the paper's model (family, mode, reasoning), so every entry point resolves it as it resolves that model."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    info = ARCHITECTURES[arch]
    tokenizer = build_tokenizer(arch)
    ids = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**TINY, **ids, head_dim=16, tie_word_embeddings=True))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**TINY, **ids, tie_word_embeddings=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**TINY, **ids, tie_word_embeddings=True))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    paper = resolve_model(registry or info["registry"])
    ModelSpec(**{**asdict(paper), "name": f"tiny-{arch}", "source": "local", "hf_id": None, "revision": None,
                 "bfcl_name": None, "path": str(folder)}).save(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizers():
    return {arch: build_tokenizer(arch) for arch in ARCHITECTURES}


# ---------------------------------------------------------------- prompt identity, every family


@pytest.mark.parametrize("name", list(FAMILY_CASES))
def test_training_prompts_are_the_evaluation_prompts_token_for_token(name, tokenizers):
    from tinyllm_utils.train import formats

    spec, tokenizer = resolve_model(name), tokenizers[FAMILY_CASES[name]]
    ids = lambda text: tokenizer(text, add_special_tokens=True).input_ids  # the transformers backend's tokenize
    examples = [e for category in CATEGORIES for e in load_category(category, 2, seed=3)]
    rows = _rows()
    by_id = {row["id"]: row for row in rows}
    sft = formats.sft_dataset(rows, spec, tokenizer)
    grpo = formats.grpo_dataset(rows, spec, tokenizer)
    built = [{**row, "pair_id": f"p{i}", "split": "train", "kind": "synthetic", "checker_error": "x",
              "chosen": pairs.reference_text(row), "rejected": "[made_up(x=1)]"} for i, row in enumerate(rows)]
    dpo = pairs.to_preference_dataset(built, spec, tokenizer, splits=("train",))["train"]
    assert len(dpo) == len(rows)  # every pair keeps its contract in the family's syntax
    for i, example in enumerate(examples):
        assert by_id[example.id] == rows[i]
        expected = ids(families.entry_prompt(example.entry, spec, tokenizer))  # what evaluate.py feeds the model
        for prompt in (sft[i]["prompt"], grpo[i]["prompt"], dpo[i]["prompt"]):
            assert ids(prompt) == expected, (name, example.id)
        # the answer parses back, by the family's parser, to a verdict of right; GRPO reads it the same way
        completion = sft[i]["completion"]
        end = families.end_of_turn(spec, tokenizer)
        assert completion.endswith(end)
        assert score_single_turn(row_example(rows[i]), completion[:-len(end)], families.parser_for(spec))["valid"]
    from tinyllm_utils.train.reward import checker_reward

    columns = {c: grpo[c] for c in ("category", "messages", "functions", "target", "id", "parser",
                                        "end_of_turn")}
    assert checker_reward(grpo["prompt"], sft["completion"], **columns) == [1.0] * len(rows)


def test_a_chat_with_tool_results_is_rendered_as_the_handler_keeps_its_history():
    """A converted multi-turn row: its earlier answer is written in the family's syntax and its tool result
    goes where the family's bfcl handler puts it, as the evaluation's multi-turn chat does."""
    functions = [{"name": "get_weather", "description": "Weather of a city.",
                  "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    row = {"id": "chat-1.2", "category": "simple_python", "functions": json.dumps(functions),
           "target": json.dumps([{"get_weather": {"city": "Rome"}}]),
           "messages": json.dumps([{"role": "user", "content": "Weather in Paris?"},
                                   {"role": "assistant", "content": "[get_weather(city='Paris')]"},
                                   {"role": "tool", "name": "get_weather", "content": "sunny"},
                                   {"role": "user", "content": "And in Rome?"}])}
    qwen_fc = prompt_of(row, resolve_model("qwen3-0.6b-fc"))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in qwen_fc
    assert "<tool_response>\nsunny\n</tool_response>" in qwen_fc and qwen_fc.endswith("<|im_start|>assistant\n")
    xlam = prompt_of(row, resolve_model("xlam-2-1b-fc-r"))
    assert '[{"name": "get_weather", "arguments": {"city": "Paris"}}]' in xlam and "sunny" in xlam
    assert "[get_weather(city='Paris')]" in prompt_of(row, resolve_model("qwen3-0.6b"))  # prompting: Python


def test_pairs_from_a_rejecter_in_another_syntax_are_checked_as_python_and_written_as_the_policys():
    qwen_fc = resolve_model("qwen3-0.6b-fc")
    raw = '<think>\nhm\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    assert families.canonical_answer(raw, qwen_fc) == "[f(a=1)]"
    assert families.canonical_answer("<think>\nnever ends", qwen_fc) == "<think>\nnever ends"
    xlam = resolve_model("xlam-2-1b-fc-r")
    assert families.canonical_answer('[{"name": "f", "arguments": {"a": 1}}]', xlam) == "[f(a=1)]"
    assert families.as_family_answer("[f(a=1)]", xlam) == '[{"name": "f", "arguments": {"a": 1}}]'
    assert families.as_family_answer("I cannot help.", xlam) == "I cannot help."  # prose stays prose


# ---------------------------------------------------------------- SFT, resume, merge, DPO, GRPO, evaluation


def _block(**values) -> dict:
    return {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "save_steps": 1,
            "max_length": 4096, "learning_rate": 1e-3, **values}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_each_architecture_trains_resumes_merges_and_is_evaluated(arch, tmp_path):
    from safetensors import safe_open

    from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate
    from tinyllm_utils.stages.pair_construction import PairConfig
    from tinyllm_utils.train import formats, loading, trainers

    folder = build_tiny(arch, tmp_path / "base")
    model, tokenizer = loading.load_for_training(str(folder))
    spec = model._tinyllm_spec
    assert spec.family == resolve_model(ARCHITECTURES[arch]["registry"]).family
    assert tokenizer.eos_token == families.end_of_turn(spec, tokenizer)  # answers end where evaluation stops
    rows = _rows(1)

    # SFT (LoRA), two steps, a checkpoint each
    sft_data = formats.sft_dataset(rows, spec, tokenizer)
    out = tmp_path / "sft"
    config = lambda: trainers.sft_config_from_dict(_block(max_steps=2))
    result = trainers.train_sft(model, tokenizer, sft_data, None, config(), loading.default_lora(), out)
    assert result["global_step"] == 2 and result["dropped_too_long"] == 0
    # killed while saving checkpoint-2: the rerun resumes from checkpoint-1
    (out / "result.json").unlink()
    (out / "stage.json").rename(out / "stage.running.json")
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").unlink()
    shutil.rmtree(out / "final")
    model, tokenizer = loading.load_for_training(str(folder))
    resumed = trainers.train_sft(model, tokenizer, sft_data, None, config(), loading.default_lora(), out)
    assert resumed["resumed_from"].endswith("checkpoint-1") and resumed["global_step"] == 2

    # merged: no adapter left, and the trained folder is the same family (its spec carries it)
    final = Path(resumed["path"])
    with safe_open(final / "model.safetensors", "pt") as weights:
        assert not any("lora" in key or "token_adapter" in key for key in weights.keys())
    trained = resolve_model(str(final))
    assert (trained.family, trained.mode, trained.reasoning, trained.method) == (
        spec.family, spec.mode, spec.reasoning, "sft_lora")

    # DPO from the SFT model, on verified pairs written in its syntax
    model, tokenizer = loading.load_for_training(str(final))
    kept, _ = pairs.verify_chosen(pairs.select_rows(pairs.bfcl_rows_as_stage02(CATEGORIES, 1, 3, ("train",))))
    built, _ = pairs.build_pairs(kept, {}, PairConfig(negatives_per_row=1, seed=0))
    preference = pairs.to_preference_dataset(built, trained, tokenizer, splits=("train",))["train"]
    assert len(preference) == len(built) > 0
    dpo = trainers.train_dpo(model, tokenizer, formats.dpo_dataset(preference), None,
                             trainers.dpo_config_from_dict(_block(max_steps=1)), loading.default_lora(),
                             tmp_path / "dpo")
    assert dpo["global_step"] == 1 and resolve_model(dpo["path"]).family == spec.family

    # GRPO from the SFT model: the checker reads the completions with the family's parser
    model, tokenizer = loading.load_for_training(str(final))
    prompts = formats.grpo_dataset(rows, trained, tokenizer)
    assert set(prompts["parser"]) == {families.parser_name(spec)}
    grpo = trainers.train_grpo(model, tokenizer, prompts, None, trainers.grpo_config_from_dict(
        {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 8,
         "save_steps": 1}), loading.default_lora(), tmp_path / "grpo", max_prompt_length=4096)
    assert grpo["global_step"] == 1 and "reward" in grpo["final_metrics"]

    # the trained model evaluated like its base: transformers backend, the family's prompt and parser
    metrics = evaluate(EvalConfig(model=str(final), categories=["simple_python", "irrelevance"], limit=1,
                                  backend="transformers", max_new_tokens=8), tmp_path / "eval", progress=False)
    run = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert run["parser"] == families.parser_name(spec) and run["backend"]["backend"] == "transformers"
    assert set(metrics["selected_ids"]) == {"simple_python", "irrelevance"}
