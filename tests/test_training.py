"""Training library on a tiny random Gemma 3 with the real tokenizer: each TRL trainer for a few steps.

    .venv/bin/python -m pytest tests/test_training.py -x -q -p no:cacheprovider
"""

import json
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from tiny_model import build_tiny_model

from tinyllm_utils.analysis import training_views
from tinyllm_utils.models.registry import ModelSpec, resolve_model
from tinyllm_utils.stages import hybrid
from tinyllm_utils.train import formats, head_only, loading, reward, trainers

torch.set_num_threads(1)  # tiny matrices: threads only add contention on a shared 2-core machine

FUNCTIONS = [
    {"name": "add", "description": "Add two integers.",
     "parameters": {"type": "dict", "properties": {"a": {"type": "integer", "description": "first"},
                                                   "b": {"type": "integer", "description": "second"}},
                    "required": ["a", "b"]}},
    {"name": "get_weather", "description": "Current weather in a city.",
     "parameters": {"type": "dict", "properties": {"city": {"type": "string", "description": "city name"}},
                    "required": ["city"]}},
]
QUESTIONS = [("What is 2 plus 3?", [{"add": {"a": 2, "b": 3}}]),
             ("Add 10 and 7.", [{"add": {"a": 10, "b": 7}}]),
             ("How is the weather in Paris?", [{"get_weather": {"city": "Paris"}}]),
             ("Weather for Oslo please.", [{"get_weather": {"city": "Oslo"}}])]


def _row(i, question, target, category="multiple"):  # two functions offered: BFCL's "multiple"
    return {"id": f"row_{i}", "source": "test", "category": category,
            "messages": json.dumps([{"role": "user", "content": question}]), "functions": json.dumps(FUNCTIONS),
            "target": json.dumps(target), "augmentation": ""}


ROWS = [_row(i, q, t) for i, (q, t) in enumerate(QUESTIONS)]
IRRELEVANT = _row(9, "Tell me a joke.", [], category="irrelevance")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-gemma")
    ModelSpec(name="tiny-gemma", source="local", prompt_format="gemma", params_b=0.017).save(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return loading.load_for_training(str(tiny_dir))


@pytest.fixture
def model(tiny):
    return _copy(tiny[0])


def _copy(model):
    import copy

    clone = copy.deepcopy(model)
    clone._tinyllm_spec = model._tinyllm_spec
    return clone


def _sft_config(**overrides):
    return trainers.sft_config_from_dict({"max_steps": 6, "learning_rate": 1e-2, "per_device_train_batch_size": 2,
                                          "save_steps": 3, "lr_scheduler_type": "constant",
                                          "include_num_input_tokens_seen": True, **overrides})


def test_load_for_training_reads_the_spec_and_ends_turns_with_end_of_turn(tiny):
    model, tokenizer = tiny
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    assert model._tinyllm_spec.prompt_format == "gemma"
    assert tokenizer.eos_token == "<end_of_turn>"
    assert model.generation_config.eos_token_id[0] == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as gemma-3-270m


def test_sft_rows_are_the_evaluation_prompt_plus_the_answer(tiny):
    from tinyllm_utils.data.rows import row_entry
    from tinyllm_utils.models.prompts import first_turn_messages, format_prompt

    data = formats.sft_dataset(ROWS + [IRRELEVANT])
    assert data[0]["prompt"] == format_prompt(first_turn_messages(row_entry(ROWS[0]))[0], "gemma")
    assert data[0]["prompt"].endswith("<start_of_turn>model\n")
    assert data[0]["completion"] == "[add(a=2, b=3)]<end_of_turn>"
    assert data[4]["completion"].startswith("None of the provided functions")


def test_head_only_loss_equals_the_full_logits_loss(tiny, model):
    tokenizer = tiny[1]
    trainer = head_only.trainer_classes()["sft"](
        model=model, args=_sft_config(output_dir="unused"), train_dataset=formats.sft_dataset(ROWS),
        processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    answer = (batch["labels"] != -100).sum().item()
    assert 0 < answer < batch["labels"].numel() // 4  # most positions are prompt: the head skips them

    model.zero_grad()
    head = trainer.compute_loss(model, dict(batch))
    head.backward()
    head_grad = model.model.layers[0].mlp.down_proj.weight.grad.clone()
    model.zero_grad()
    full = head_only.full_logits_loss(model, batch)  # transformers' own loss on all (B, T, 262k) logits
    full.backward()
    full_grad = model.model.layers[0].mlp.down_proj.weight.grad
    assert head.item() == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(head_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_head_only_loss_trains_the_end_token_row_and_honours_disabled_adapters(tiny, model):
    from peft import get_peft_model

    tokenizer = tiny[1]
    lora = trainers.train_end_token(loading.default_lora(), tokenizer)
    assert lora.trainable_token_indices == [tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    peft_model = get_peft_model(model, lora)
    delta = peft_model.get_base_model().model.embed_tokens.token_adapter.trainable_tokens_delta["default"]
    with torch.no_grad():  # a trained row (peft starts it equal to the base row)
        delta.mul_(3.0)
    trainer = head_only.trainer_classes()["sft"](
        model=peft_model, args=_sft_config(output_dir="unused"), train_dataset=formats.sft_dataset(ROWS),
        processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))

    head = trainer.compute_loss(trainer.model, dict(batch))
    head.backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0  # every answer ends with <end_of_turn>
    full = head_only.full_logits_loss(peft_model, batch)
    assert head.item() == pytest.approx(full.item(), rel=1e-5)
    with peft_model.disable_adapter():  # DPO's LoRA reference: the base model's own row
        disabled = trainer.compute_loss(trainer.model, dict(batch))
        assert disabled.item() == pytest.approx(head_only.full_logits_loss(peft_model, batch).item(), rel=1e-5)
    assert disabled.item() != pytest.approx(head.item(), rel=1e-3)


def test_sft_lora_learns_checkpoints_resumes_and_merges_with_ties_kept(tiny, tiny_dir, model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = tiny[1]
    data = formats.sft_dataset(ROWS)
    out = tmp_path / "sft"
    result = trainers.train_sft(model, tokenizer, data, None, _sft_config(), loading.default_lora(), out,
                                stage_key="04_sft")
    curves = pd.read_csv(out / "curves.csv")
    assert {"loss", "learning_rate", "grad_norm"} <= set(curves.columns)
    losses = curves["loss"].dropna().tolist()
    assert len(losses) == 6 and min(losses[3:]) < losses[0] - 0.3
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    final = Path(result["path"])
    spec = resolve_model(str(final))
    assert (spec.prompt_format, spec.source, spec.method, spec.base_model, spec.stage_key, spec.path) == \
        ("gemma", "local", "sft_lora", "tiny-gemma", "04_sft", str(final.resolve()))
    assert spec.parent == str(tiny_dir.resolve())
    with safe_open(final / "model.safetensors", "pt") as weights:  # one tied matrix, no adapter left
        stored = {k: weights.get_tensor(k) for k in weights.keys()}
    keys = set(stored)
    assert not any("lora" in k for k in keys) and not any(k.startswith("lm_head") for k in keys)
    assert not any("token_adapter" in k for k in keys)
    # stored as the F16 GGUF keeps them: matrices in F16, norms in full precision
    assert {str(t.dtype) for t in stored.values() if t.dim() > 1} == {"torch.float16"}
    assert {str(t.dtype) for t in stored.values() if t.dim() == 1} == {"torch.float32"}

    # merge parity: the merged folder generates what base + adapter (from the last checkpoint) generates
    merged = AutoModelForCausalLM.from_pretrained(str(final))
    assert merged.dtype == torch.float32  # loads in the dtype it was trained in, not the one it is stored in
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    end_id = tokenizer.convert_tokens_to_ids("<end_of_turn>")  # train_end_token: the answers' end row learned
    untrained = tiny[0].get_input_embeddings().weight.half().float()  # the base rounded as the save rounds it
    trained_rows = (merged.get_input_embeddings().weight != untrained).any(dim=1)
    assert trained_rows.nonzero().flatten().tolist() == [end_id]
    base = _copy(tiny[0])  # the untrained weights (tests train copies)
    unmerged = PeftModel.from_pretrained(base, str(out / "checkpoints" / "checkpoint-6")).eval()
    prompt = tokenizer(data[0]["prompt"], return_tensors="pt")
    with torch.no_grad():
        a = unmerged.generate(**prompt, max_new_tokens=8, do_sample=False)
        b = merged.eval().generate(**prompt, max_new_tokens=8, do_sample=False)
        # equal up to the F16 rounding of the stored matrices
        torch.testing.assert_close(unmerged(**prompt).logits, merged(**prompt).logits, rtol=1e-2, atol=1e-2)
    assert a.tolist() == b.tolist()

    # a rerun with the same parameters returns the finished result without training, its files where the
    # folder is now
    moved = out.rename(tmp_path / "moved")
    again = trainers.train_sft(_copy(tiny[0]), tokenizer, data, None, _sft_config(), loading.default_lora(), moved)
    assert again["seconds"] == result["seconds"]
    assert (again["path"], again["curves"]) == (str(moved / "final"), str(moved / "curves.csv"))
    moved.rename(out)
    # an interrupted run resumes from its last checkpoint
    # killed before the end: no result, and the running marker (tinyllm_utils.core.work) instead of the completion one
    (out / "result.json").unlink()
    (out / "stage.json").rename(out / "stage.running.json")
    import shutil

    # killed while saving checkpoint-6: weights written, not the trainer state (transformers writes it last)
    (out / "checkpoints" / "checkpoint-6" / "trainer_state.json").unlink()
    shutil.rmtree(final)
    resumed = trainers.train_sft(_copy(tiny[0]), tokenizer, data, None, _sft_config(), loading.default_lora(), out)
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["global_step"] == 6
    assert (out / "checkpoints" / "checkpoint-6" / "trainer_state.json").exists()  # written whole this time
    # its seconds count from checkpoint-3: the tokens its rate divides must too (quick's resumed SFT read 153
    # tokens/s for 68)
    at_resume = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert resumed["tokens_seen_at_resume"] == at_resume["num_input_tokens_seen"] > 0
    assert resumed["train_metrics"]["num_input_tokens_seen"] > resumed["tokens_seen_at_resume"]
    # and its seconds from step 0: checkpoint-3's, then this run's (stage 07's training_seconds_total reads them)
    clock = json.loads((out / "checkpoints" / "checkpoint-3" / trainers.CLOCK_FILE).read_text())
    assert resumed["seconds_at_resume"] == clock["seconds"] > 0
    assert resumed["seconds"] > resumed["seconds_at_resume"]
    assert (Path(resumed["path"]) / "model_spec.json").exists()
    # other parameters in the same folder are refused, naming what differs
    with pytest.raises(ValueError, match="config"):
        trainers.train_sft(_copy(tiny[0]), tokenizer, data, None, _sft_config(learning_rate=1e-3),
                           loading.default_lora(), out)


def test_full_sft_then_dpo_from_its_checkpoint(tiny, model, tmp_path):
    sft = trainers.train_sft(model, tiny[1], formats.sft_dataset(ROWS), formats.sft_dataset(ROWS[:2]),
                             _sft_config(max_steps=3, learning_rate=3e-3, save_strategy="no", eval_strategy="steps",
                                         eval_steps=3), None, tmp_path / "sft")  # checkpoints: tested with LoRA
    losses = pd.read_csv(tmp_path / "sft" / "curves.csv")["loss"].dropna().tolist()
    assert losses[-1] < losses[0] and "eval_loss" in sft["final_metrics"]
    assert resolve_model(sft["path"]).method == "sft"

    policy, tokenizer = loading.load_for_training(sft["path"])  # hybrid: DPO starts from the SFT model
    config = trainers.dpo_config_from_dict({"max_steps": 3, "learning_rate": 1e-3, "beta": 0.5, "save_strategy": "no",
                                            "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5],
                                            "lr_scheduler_type": "constant"})
    dpo = trainers.train_dpo(policy, tokenizer, formats.dpo_dataset(_pairs()), None, config, None, tmp_path / "dpo")
    curves = pd.read_csv(tmp_path / "dpo" / "curves.csv")
    assert curves["rewards/margins"].dropna().iloc[-1] > 0  # 0 at the first step: the explicit copy is the reference
    spec = resolve_model(dpo["path"])
    assert (spec.method, spec.parent, spec.base_model) == ("dpo", str(Path(sft["path"]).resolve()), "tiny-gemma")


def _pairs():
    from datasets import Dataset

    rows = []
    for row in ROWS:
        example = formats.prompt_and_answer(row, "gemma")
        rows.append({"prompt": example["prompt"], "chosen": example["completion"],
                     "rejected": "[get_weather(city='nowhere')]<end_of_turn>"})
    return Dataset.from_list(rows)


def test_dpo_lora_learns_the_preference(tiny, model, tmp_path):
    config = trainers.dpo_config_from_dict({"max_steps": 4, "learning_rate": 5e-3, "beta": 0.5, "save_steps": 4,
                                            "lr_scheduler_type": "constant"})
    too_long = {**_pairs()[0], "rejected": "[add(a=1, b=1)] " * 400}  # > max_length (2048): left out, not cut
    pairs = _pairs().add_item(too_long)
    result = trainers.train_dpo(model, tiny[1], formats.dpo_dataset(pairs), None, config,
                                loading.default_lora(), tmp_path / "dpo")
    assert (result["rows"], result["dropped_too_long"]) == (len(ROWS), 1)
    curves = pd.read_csv(tmp_path / "dpo" / "curves.csv")
    margins = curves["rewards/margins"].dropna().tolist()  # reference: the policy with its adapter disabled
    assert margins[-1] > margins[0] and curves["rewards/accuracies"].dropna().iloc[-1] > 0.5
    assert curves["loss"].dropna().iloc[-1] < curves["loss"].dropna().iloc[0]
    assert (tmp_path / "dpo" / "checkpoints" / "checkpoint-4").exists()
    assert resolve_model(result["path"]).method == "dpo_lora"


def test_rows_that_do_not_fit_max_length_are_left_out_not_cut(tiny):
    from datasets import Dataset

    example = formats.prompt_and_answer(ROWS[0], "gemma")
    short, long = "[add(a=2)]<end_of_turn>", "[add(a=2, b=3)] " * 40
    pairs = Dataset.from_list([{"prompt": example["prompt"], "chosen": example["completion"], "rejected": short},
                               {"prompt": example["prompt"], "chosen": example["completion"], "rejected": long}])
    fits = len(tiny[1](example["prompt"] + example["completion"]).input_ids) + 20  # the long answer does not
    kept, dropped = formats.drop_too_long(pairs, tiny[1], fits, ("chosen", "rejected"))
    assert dropped == 1 and kept["rejected"] == [short]  # either answer too long drops the pair
    assert formats.drop_too_long(pairs, tiny[1], fits, ("chosen",))[1] == 0
    sft_rows = formats.sft_dataset(ROWS)
    assert formats.drop_too_long(sft_rows, tiny[1], None) == (sft_rows, 0)
    assert formats.drop_too_long(None, tiny[1], fits) == (None, 0)  # no eval set
    with pytest.raises(ValueError, match="none of the 2 rows fits max_length=8"):
        formats.drop_too_long(pairs, tiny[1], 8, ("chosen", "rejected"))


def test_checker_reward_scores_only_what_the_checker_accepts(tmp_path):
    rows = ROWS[:1] * 6 + [IRRELEVANT] * 2
    columns = {c: [r[c] for r in rows] for c in formats.GRPO_COLUMNS}
    marker = tmp_path / "pwned"
    completions = [
        "[add(a=2, b=3)]<end_of_turn>",  # correct
        "[add(a=2, b=4)]",  # wrong value
        "[get_weather(city='Paris')]",  # wrong function
        "I think you should add them",  # unparseable prose
        f"[__import__('os').system('touch {marker}')]",  # malicious: never executed, scored 0
        "[add(a=eval('2'), b=3)]",  # an expression where a literal belongs
        "None of the provided functions can answer this request.",  # irrelevance: no call is right
        f"[add(a=open('{marker}', 'w'), b=1)]",  # a call on an irrelevance prompt is wrong
    ]
    rewards = reward.checker_reward(prompts=[""] * len(rows), completions=completions, **columns)
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert not marker.exists()
    conversational = [[{"role": "assistant", "content": "[add(a=2, b=3)]"}]]
    assert reward.checker_reward([""], conversational, **{c: v[:1] for c, v in columns.items()}) == [1.0]
    # a row the scorer cannot read fails every completion: a broken run, not a batch of wrong answers
    broken = {**{c: v[:2] for c, v in columns.items()}, "functions": ["not json"] * 2}
    with pytest.raises(RuntimeError, match="scoring failed on every completion"):
        reward.checker_reward([""] * 2, completions[:2], **broken)


def test_grpo_runs_with_the_checker_reward(tiny, model, tmp_path):
    data = formats.grpo_dataset(ROWS)
    config = trainers.grpo_config_from_dict({"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 2,
                                             "max_completion_length": 8, "save_steps": 2})
    # a prompt longer than max_prompt_length is left out (TRL 1.16 has no option of its own)
    longest = max(len(tiny[1](prompt).input_ids) for prompt in data["prompt"])
    long_row = _row(8, "What is 2 plus 3? " * 20, [{"add": {"a": 2, "b": 3}}])
    data = formats.grpo_dataset(ROWS + [long_row])
    result = trainers.train_grpo(model, tiny[1], data, None, config, loading.default_lora(), tmp_path / "grpo",
                                 max_prompt_length=longest)
    assert (result["rows"], result["dropped_too_long"], result["global_step"]) == (4, 1, 2)
    with pytest.raises(formats.NothingFitsError, match="max_length=8"):
        trainers.train_grpo(model, tiny[1], data, None, config, None, tmp_path / "grpo-short", max_prompt_length=8)
    curves = pd.read_csv(tmp_path / "grpo" / "curves.csv")
    assert {"reward", "reward_std", "rewards/checker_reward/mean"} <= set(curves.columns)
    assert curves["reward"].between(0, 1).all()  # a random model earns nothing, but the loop ran end to end
    assert (tmp_path / "grpo" / "checkpoints" / "checkpoint-2").exists()
    assert resolve_model(result["path"]).method == "grpo_lora"
    fig = training_views.plot_curves(tmp_path / "grpo" / "curves.csv", "grpo")
    assert [ax.get_title() for ax in fig.axes][-1] == "reward"


def test_self_improvement_cycle_trains_on_the_models_own_failures(tiny_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    from conftest import FakeBackend

    stage02 = DatasetDict({"train": Dataset.from_list(ROWS), "validation": Dataset.from_list(ROWS[:1])})
    # wrong on both sums and on Oslo, right on Paris: three checker-verified failures
    wrong = FakeBackend(lambda prompt: "[get_weather(city='Paris')]" if "Paris" in prompt or "Oslo" in prompt
                        else "[add(a=0, b=0)]")
    result = hybrid.self_improvement_cycle(str(tiny_dir), stage02, tmp_path / "cycle1",
                                             {"max_steps": 2, "learning_rate": 1e-3}, lora=loading.default_lora(),
                                             backend=wrong, stage_key="06_cycle1")
    assert result["trained"] and result["rows"] == 4 and result["failed"] == 3 and result["pairs"] == 3
    # its answering: the seconds the generator recorded per answer (the fake's 1 ms each); its training's, result.json's
    assert result["generation_seconds"] == pytest.approx(4 * 0.001)
    trained = json.loads((tmp_path / "cycle1" / "dpo" / "result.json").read_text())
    assert json.loads((tmp_path / "cycle1" / "cycle.json").read_text())["seconds"] == trained["seconds"] > 0
    spec = resolve_model(result["path"])
    assert (spec.method, spec.stage_key, spec.parent) == ("dpo_lora", "06_cycle1", str(tiny_dir.resolve()))
    # rerun (a stage resumed after the cycle trained): nothing answered or trained again, the same cost
    silent = FakeBackend(lambda prompt: pytest.fail("answered again"))
    again = hybrid.self_improvement_cycle(str(tiny_dir), stage02, tmp_path / "cycle1",
                                            {"max_steps": 2, "learning_rate": 1e-3}, lora=loading.default_lora(),
                                            backend=silent, stage_key="06_cycle1")
    assert (again["path"], again["generation_seconds"], silent.calls) == (result["path"], result["generation_seconds"], 0)
    assert json.loads((tmp_path / "cycle1" / "dpo" / "result.json").read_text()) == trained


def test_a_cycle_checks_its_training_block_before_it_answers(tiny_dir, tmp_path):
    """A GRPO cycle given a DPO block (max_length is DPOConfig's) fails at once, not after minutes of answering."""
    from datasets import Dataset, DatasetDict

    from conftest import FakeBackend

    stage02 = DatasetDict({"train": Dataset.from_list(ROWS), "validation": Dataset.from_list(ROWS[:1])})
    backend = FakeBackend(lambda prompt: "[add(a=0, b=0)]")
    with pytest.raises(TypeError, match="max_length"):
        hybrid.self_improvement_cycle(str(tiny_dir), stage02, tmp_path / "cycle1", {"max_length": 1024},
                                        method="grpo", backend=backend)
    # a dataset without train rows: the validation rows are never trained on instead
    with pytest.raises(ValueError, match="no train rows"):
        hybrid.self_improvement_cycle(str(tiny_dir), DatasetDict({"validation": stage02["validation"]}),
                                        tmp_path / "cycle1", {"max_steps": 1}, backend=backend)
    assert backend.calls == 0


def test_an_empty_training_set_is_refused_by_name(tiny, model, tmp_path):
    with pytest.raises(ValueError, match="sft: the training set is empty"):
        trainers.train_sft(model, tiny[1], formats.sft_dataset([]), None, _sft_config(), None, tmp_path / "sft")


def test_a_cycle_whose_pairs_are_all_too_long_skips_with_the_reason(tiny_dir, tmp_path):
    """Failures on prompts longer than max_length give pairs DPO could only train on cut answers: the cycle
    does not train and says why, and its start model stays the current one."""
    from datasets import Dataset, DatasetDict

    from conftest import FakeBackend

    stage02 = DatasetDict({"train": Dataset.from_list(ROWS), "validation": Dataset.from_list(ROWS[:1])})
    result = hybrid.self_improvement_cycle(str(tiny_dir), stage02, tmp_path / "cycle1",
                                             {"max_steps": 1, "max_length": 8}, lora=loading.default_lora(),
                                             backend=FakeBackend(lambda prompt: "[add(a=0, b=0)]"))
    assert not result["trained"] and result["pairs"] >= 1
    assert "max_length=8" in result["skipped"]
    assert result["path"] == str(tiny_dir.resolve())
    assert not (tmp_path / "cycle1" / "dpo" / "final").exists()


def test_a_cycle_that_trains_nothing_leaves_the_next_cycle_to_try_other_rows(tiny_dir, tmp_path, monkeypatch):
    """Stage 06 goes on after a cycle that could not train: the next cycle answers other rows (its own seed)
    with the same current model, and each cycle's reason reaches the table."""
    import shutil

    from tinyllm_utils.stages import common, hybrid

    _stage01_run(tmp_path, backend="transformers")
    shutil.copytree(tiny_dir, tmp_path / "04_sft" / "sft-lora" / "final")
    monkeypatch.setattr(hybrid, "load_stage02", lambda stage_dir: "stage-02 rows")
    asked = []

    def cycle(current, data, method_dir, training_args, seed, **kwargs):
        asked.append((Path(current).name, seed))
        return {"trained": False, "skipped": f"no checked failure among seed {seed}'s rows", "path": str(current)}

    monkeypatch.setattr(hybrid, "self_improvement_cycle", cycle)
    config = hybrid.HybridStageConfig(sft_dpo=None, sft_grpo=None, cycles=3, seed=5)
    results = hybrid.run_hybrid_stage(config, tmp_path / "06_hybrid")
    assert asked == [("final", 6), ("final", 7), ("final", 8)]
    table = common.summary_table(results)
    assert list(table["method"]) == ["cycle 1", "cycle 2", "cycle 3"]
    assert table["note"].str.startswith("no checked failure among seed").all()


@pytest.mark.parametrize("tokens_at_resume, rate", [(1000, 3000 / 30), (4000, None)])
def test_a_cycles_seconds_are_its_answering_and_its_training_from_step_0(tiny_dir, tmp_path, monkeypatch,
                                                                          tokens_at_resume, rate):
    """A cycle costs its answering (the generator's recorded seconds) and its training (result.json: from step 0
    when resumed); its tokens/s divides only the tokens and seconds its last process trained (none, when it was
    killed after its last checkpoint: no rate). A rerun that only re-evaluates records the same, and result.json's
    paths from where the run was written are not used."""
    import shutil

    from tinyllm_utils.stages import common, hybrid

    _stage01_run(tmp_path, backend="transformers")
    shutil.copytree(tiny_dir, tmp_path / "04_sft" / "sft-lora" / "final")
    monkeypatch.setattr(hybrid, "load_stage02", lambda stage_dir: "stage-02 rows")
    monkeypatch.setattr(common, "evaluate", lambda config, out, progress: {"categories": {}})

    def cycle(current, data, method_dir, training_args, seed, **kwargs):
        final = method_dir / "dpo" / "final"
        if not final.exists():
            shutil.copytree(tiny_dir, final)
        (final.parent / "result.json").write_text(json.dumps({
            "path": "/elsewhere/dpo/final", "curves": "/elsewhere/dpo/curves.csv", "method": "dpo_lora",
            "seconds": 130.0, "seconds_at_resume": 100.0, "tokens_seen_at_resume": tokens_at_resume,
            "resumed_from": str(method_dir / "dpo" / "checkpoints" / "checkpoint-10"), "global_step": 12,
            "epoch": 1.0, "train_metrics": {"num_input_tokens_seen": 4000}}))
        return {"trained": True, "path": str(final), "rows": 12, "failed": 7, "pairs": 7, "generation_seconds": 20.0}

    monkeypatch.setattr(hybrid, "self_improvement_cycle", cycle)
    config = hybrid.HybridStageConfig(sft_dpo=None, sft_grpo=None, cycles=1)
    for _ in range(2):
        hybrid.run_hybrid_stage(config, tmp_path / "06_hybrid")
        recorded = json.loads((tmp_path / "06_hybrid" / "cycle-1" / "training.json").read_text())
        assert (recorded["seconds"], recorded["generation_seconds"], recorded["seconds_at_resume"]) == (150, 20, 100)
        assert recorded["tokens_per_s"] == pytest.approx(rate)
        assert (recorded["resumed_from"], recorded["training_method"]) == ("checkpoint-10", "dpo_lora")
        assert recorded["curves"] == "dpo/curves.csv"


def test_a_cycle_answers_with_the_model_as_the_evaluation_runs_it(tiny_dir, tmp_path, monkeypatch):
    """Stage 06 hands the cycle the exported file and the evaluation's backend: the failures it learns from are
    the ones the evaluation counts; the checkpoint folder is still what it trains."""
    from datasets import Dataset, DatasetDict

    from conftest import FakeBackend
    from tinyllm_utils.backends import factory

    exported = tmp_path / "gguf"  # stands for the GGUF export: a spec of its own, no weights needed here
    exported.mkdir()
    (exported / "model_spec.json").write_text((tiny_dir / "model_spec.json").read_text())
    asked = []

    def make_backend(spec, backend, *args, **kwargs):
        asked.append((spec.path, backend))
        return FakeBackend(lambda prompt: "[add(a=0, b=0)]")  # wrong on the sums: pairs to train on

    monkeypatch.setattr(factory, "make_backend", make_backend)
    stage02 = DatasetDict({"train": Dataset.from_list(ROWS), "validation": Dataset.from_list(ROWS[:1])})
    result = hybrid.self_improvement_cycle(str(tiny_dir), stage02, tmp_path / "cycle1",
                                             {"max_steps": 1, "learning_rate": 1e-3}, lora=loading.default_lora(),
                                             backend="llama_cpp", generator=str(exported))
    assert asked == [(str(exported.resolve()), "llama_cpp")]
    assert result["trained"] and result["pairs"] >= 1
    assert resolve_model(result["path"]).parent == str(tiny_dir.resolve())  # trained from the folder


RSS_AFTER_FREE = """
import ctypes, json
from tinyllm_utils.train.trainers import release_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
block = libc.malloc(300 * 2**20)
ctypes.memset(block, 1, 300 * 2**20)  # touched: resident
libc.free(block)
kept = rss_mb()
release_memory()
print(json.dumps({"kept": kept, "released": rss_mb()}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc (Linux)")
def test_release_memory_gives_back_what_the_kernels_malloc_settings_keep():
    import subprocess
    import sys

    from tinyllm_utils.pipeline import KERNEL_MALLOC_ENV

    env = {**os.environ, **KERNEL_MALLOC_ENV}  # as a stage kernel starts: freed memory stays in the heap
    out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE], env=env, capture_output=True, text=True,
                         check=True).stdout
    rss = json.loads(out.strip().splitlines()[-1])
    assert rss["kept"] - rss["released"] > 250, rss


def test_configs_are_trls_own_classes_with_cpu_defaults(tmp_path):
    import trl

    sft = trainers.sft_config_from_dict({"num_train_epochs": 2}, tmp_path)
    assert isinstance(sft, trl.SFTConfig) and sft.completion_only_loss and sft.num_train_epochs == 2
    assert sft.output_dir == str(tmp_path) and sft.report_to in ([], "none", ["none"])
    if not torch.cuda.is_available():
        assert sft.use_cpu and not sft.bf16 and not sft.activation_checkpointing
    # the deprecated name in a block still decides, and the study's defaults warn about nothing
    assert trainers.sft_config_from_dict({"gradient_checkpointing": True}, tmp_path).activation_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        trainers.sft_config_from_dict({}, tmp_path)
    for loss_type in (["sigmoid"], ["ipo"], ["apo_zero"], ["sigmoid", "sft"]):
        assert trainers.dpo_config_from_dict({"loss_type": loss_type, "beta": 0.2}).loss_type == loss_type
    grpo = trainers.grpo_config_from_dict({"num_generations": 2, "max_completion_length": 32})
    assert isinstance(grpo, trl.GRPOConfig) and grpo.num_generations == 2
    with pytest.raises(TypeError):
        trainers.sft_config_from_dict({"no_such_option": 1})


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(trainers.__file__).parents[1] / "configs" / "accelerate"
    names = sorted(p.name for p in folder.glob("*.yaml"))
    assert names == ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml", "multi_gpu.yaml"]
    for name in names:
        raw = yaml.safe_load((folder / name).read_text())
        assert raw["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
        config = load_config_from_file(str(folder / name))
        assert config.distributed_type.value == raw["distributed_type"] and config.num_processes == 8
    assert os.path.exists(folder / "fsdp.yaml")


@pytest.mark.parametrize("profile", ["smoke", "quick", "full", "paper"])
def test_every_profile_training_block_is_a_valid_trl_config(profile, tmp_path):
    # A misspelt or removed TRL/transformers option (e.g. `warmup_ratio` in transformers 5) must fail here,
    # not an hour into a run.
    from tinyllm_utils.core.profiles import resolve_profile

    stages = resolve_profile(profile)["stages"]
    blocks = [("sft", stages["04_sft"][k]) for k in ("lora_sft", "full_sft")]
    blocks += [("dpo", stages["05_dpo"]["dpo"]), ("dpo", stages["06_hybrid"]["sft_dpo"]),
               ("grpo", stages["06_hybrid"]["sft_grpo"]),
               (stages["06_hybrid"]["cycle_method"], stages["06_hybrid"]["cycle_training"])]
    checked = [trainers.training_config(kind, block, tmp_path) for kind, block in blocks if block is not None]
    assert len(checked) >= 4


def test_the_report_counts_real_tokens_not_padding():
    from tinyllm_utils.stages.common import tokens_seen

    config = trainers.sft_config_from_dict(tokens_seen({"max_steps": 1}))
    assert config.include_num_input_tokens_seen == "non_padding"
    assert tokens_seen({"include_num_input_tokens_seen": "no"})["include_num_input_tokens_seen"] == "no"


def test_best_model_ranks_on_the_categories_that_expect_a_call():
    from tinyllm_utils.stages.common import MissingStageError, best_model

    never_calls = {"accuracy": 0.2, "call_accuracy": 0.0, "gguf": "a.gguf"}  # 100 % irrelevance, 0 % elsewhere
    calls = {"accuracy": 0.16, "call_accuracy": 0.06, "gguf": "b.gguf"}
    not_exported = {"accuracy": 0.9, "call_accuracy": 0.9, "gguf": None}
    assert best_model({"dpo": never_calls, "sft-lora": calls, "x": not_exported}) == "sft-lora"
    tie = dict(calls, accuracy=0.3)
    assert best_model({"sft-lora": calls, "sft→dpo": tie}) == "sft→dpo"  # the plain mean breaks a tie
    with pytest.raises(MissingStageError, match="best"):
        best_model({"x": not_exported})


def _stage01_run(run_root: Path, **parameters) -> Path:
    """A stage-01 evaluation folder holding only the run.json the training stages read their protocol from."""
    from dataclasses import asdict

    from tinyllm_utils.evaluation.evaluate import EvalConfig

    folder = run_root / "01_baseline_evaluation" / "gemma-3-270m"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"parameters": asdict(EvalConfig(**parameters))}))
    return run_root / "04_sft"


def test_trained_models_are_evaluated_with_stage_01s_protocol(tmp_path):
    from tinyllm_utils.stages.common import MissingStageError, eval_protocol

    with pytest.raises(MissingStageError, match="run stage 01 first"):
        eval_protocol(tmp_path / "empty" / "04_sft")
    stage_dir = _stage01_run(tmp_path / "run", categories=["simple_python", "irrelevance"], limit=25, seed=3)
    protocol = eval_protocol(stage_dir, ["irrelevance"])
    assert (protocol.categories, protocol.limit, protocol.seed, protocol.backend) == (
        ["irrelevance"], 25, 3, "llama_cpp")
    with pytest.raises(ValueError, match="were not evaluated in stage 01"):
        eval_protocol(stage_dir, ["multiple"])


def test_a_stage_01_run_through_a_server_stops_training_stages_before_they_train(tmp_path):
    """A server answers for the model it serves: checkpoints trained here would be scored on another model."""
    from tinyllm_utils.stages.common import eval_protocol

    stage_dir = _stage01_run(tmp_path, backend="openai")
    with pytest.raises(ValueError, match="backend llama_cpp or transformers"):
        eval_protocol(stage_dir)


def test_a_cycle_reads_its_start_models_export_and_never_writes_one(tiny_dir, tmp_path):
    from tinyllm_utils.evaluation.evaluate import EvalConfig
    from tinyllm_utils.stages.common import MissingStageError, evaluated_model, exported_gguf

    method_dir = tmp_path / "04_sft" / "sft-lora"
    method_dir.mkdir(parents=True)
    llama_cpp, transformers = EvalConfig(backend="llama_cpp"), EvalConfig(backend="transformers")
    assert evaluated_model(tiny_dir, method_dir, transformers) == str(tiny_dir)  # the folder is what runs
    with pytest.raises(MissingStageError, match="rerun the stage that trained it"):
        evaluated_model(tiny_dir, method_dir, llama_cpp)
    assert not (method_dir / "gguf").exists()  # another stage's folder is left as it was
    gguf = exported_gguf(method_dir, resolve_model(str(tiny_dir)).name)
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert evaluated_model(tiny_dir, method_dir, llama_cpp) == str(gguf)


def test_a_parent_checkpoint_in_the_run_is_recorded_by_its_path_there(tmp_path, monkeypatch):
    from tinyllm_utils.stages.common import in_run_path

    run = tmp_path / "outputs" / "quick"
    (run / "04_sft" / "sft-lora" / "final").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    assert in_run_path(str(run / "04_sft" / "sft-lora" / "final"), run) == "04_sft/sft-lora/final"
    assert in_run_path("outputs/quick/04_sft/sft-lora/final", Path("outputs/quick")) == "04_sft/sft-lora/final"
    assert in_run_path(str(tmp_path / "elsewhere"), run) == str(tmp_path / "elsewhere")  # not this run's: as given
    assert in_run_path("gemma-3-270m", run) == "gemma-3-270m"  # a registry name


def test_only_what_cannot_be_trained_as_it_is_scored_is_refused():
    """Every family's rows are rendered by its evaluation's renderer and answered in its syntax
    (tests/test_paper_architectures.py trains each architecture): the paper's models are trainable; a tokenizer
    without the family's end of turn is not, and the refusal says why."""
    from types import SimpleNamespace

    for name in ("gemma-3-270m", "tinyllama-1.1b-chat", "xlam-2-1b-fc-r", "qwen3-1.7b", "qwen3-1.7b-fc"):
        loading.check_trainable(resolve_model(name))
    no_end = SimpleNamespace(get_vocab=lambda: {"a": 0}, eos_token="</s>", chat_template="x")
    with pytest.raises(loading.UntrainableFamilyError, match="'<\\|im_end\\|>' to end an answer"):
        loading.check_trainable(resolve_model("xlam-2-1b-fc-r"), no_end)


def test_dpo_refuses_pairs_written_in_another_models_prompt_format(tmp_path):
    from tinyllm_utils.stages.dpo import check_pairs_fit

    (tmp_path / "03_pair_construction").mkdir()
    card = tmp_path / "03_pair_construction" / "pairs_card.json"
    stage = tmp_path / "05_dpo"
    sft_checkpoint = ModelSpec("gemma-3-270m-sft-lora", "local", "gemma", base_model="gemma-3-270m")
    card.write_text(json.dumps({"parameters": {"model": "gemma-3-270m"}}))
    check_pairs_fit(stage, resolve_model("gemma-3-270m"))
    check_pairs_fit(stage, sft_checkpoint)  # trained from it: the same Gemma turns
    card.write_text(json.dumps({"parameters": {"model": "tinyllama-1.1b-chat"}}))
    with pytest.raises(ValueError, match="set 03_pair_construction.model to 'gemma-3-270m'"):
        check_pairs_fit(stage, sft_checkpoint)
    tinyllama = resolve_model("tinyllama-1.1b-chat")
    check_pairs_fit(stage, tinyllama)
    check_pairs_fit(stage, ModelSpec("tl-sft", "local", "chat_template", base_model="tinyllama-1.1b-chat"))
