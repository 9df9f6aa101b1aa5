"""The call-list grammar, checked by llama.cpp's own grammar sampler (the one that enforces it when decoding)."""

import ctypes
import json
import math

import pytest

from conftest import first_option
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.grammar import GRAMMAR_VERSION, call_list_grammar
from tinyllm_utils.bfcl.scoring import score_example
from tinyllm_utils.core.results import read_jsonl
from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate
from tinyllm_utils.models.registry import resolve_model

llama_cpp = pytest.importorskip("llama_cpp")
GEMMA = resolve_model("gemma-3-270m")
PYTHON_CALL_CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "live_simple",
                          "live_multiple", "live_parallel", "live_parallel_multiple"]


@pytest.fixture(scope="module")
def accepts():
    """accepts(grammar, text): llama.cpp's grammar sampler allows `text`, token by token, then end of turn."""
    llm = llama_cpp.Llama(model_path=str(GEMMA.gguf_path()), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    end_of_turn = llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
    assert len(end_of_turn) == 1 and llama_cpp.llama_vocab_is_eog(vocab, end_of_turn[0])

    def allowed(sampler, token: int) -> bool:
        data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
        candidates = llama_cpp.llama_token_data_array(data, 1, -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return data[0].logit != -math.inf

    def _accepts(grammar: str, text: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        assert sampler, "llama.cpp could not parse the grammar"
        try:
            for token in llm.tokenize(text.encode(), add_bos=False, special=False):
                if not allowed(sampler, token):
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return allowed(sampler, end_of_turn[0])  # the answer may end here
        finally:
            llama_cpp.llama_sampler_free(sampler)

    return _accepts


def schema_ordered_answer(example) -> str:
    """The ground truth as a call list, keywords in the schema's order (the order the grammar asks for); an
    optional parameter the ground truth allows to leave out is left out (bfcl's data give some a value of
    another type as the other option: `venue: ['', True]` for a string), and None is written as None."""
    functions = {f["name"]: f for f in example.entry["function"]}
    calls = []
    for item in example.ground_truth:
        for name, params in item.items():
            order = list(functions[name]["parameters"].get("properties", {}))
            required = functions[name]["parameters"].get("required", [])  # bfcl's checker wants them all
            arguments = []
            for key in order:
                options = [v for v in params.get(key, [""]) if v != ""]
                if options and (key in required or "" not in params[key]):
                    arguments.append(f"{key}={first_option(options)!r}")
            calls.append(f"{name}({', '.join(arguments)})")
    return "[" + ", ".join(calls) + "]"


# Ground truths the grammar cannot write, because bfcl's data give a value the offered schema does not allow
# and bfcl's checker accepts it (it checks no enum, and takes a value of the ground truth's own type where that
# differs from the declared one): a string naming a variable where an array is declared (`x="data['sales']"`),
# strings in a list of integers, a value outside the enum or in another case (`genre='horror'`, enum
# 'Horror': the grammar writes 'Horror', which bfcl's case-folding also scores right), an integer or True
# where an enum of strings is declared. 15 of the 2 351 entries of these categories.
GRAMMAR_CANNOT_WRITE = {
    "parallel_multiple_21", "parallel_multiple_94", "live_parallel_multiple_2-2-0", "live_multiple_87-38-4",
    "live_multiple_552-153-1", "live_multiple_595-158-1", "live_multiple_596-158-2", "live_multiple_731-167-2",
    "live_multiple_733-167-4", "live_multiple_735-167-6", "live_multiple_750-169-5", "live_multiple_756-169-11",
    "live_multiple_835-178-10", "live_multiple_871-182-8", "live_multiple_947-197-0"}


@pytest.mark.parametrize("category", PYTHON_CALL_CATEGORIES)
def test_every_right_answer_is_allowed(accepts, category):
    """The grammar never forbids a right answer: each entry's ground truth, where bfcl's checker scores it
    right, passes llama.cpp's grammar sampler (some live ground truths are unanswerable, e.g. a required
    parameter with no possible value)."""
    examples = load_category(category, None, 0)
    right = [(e, answer) for e in examples if score_example(e, answer := schema_ordered_answer(e))["valid"]]
    assert len(right) >= 0.9 * len(examples)  # the check covers nearly every entry
    refused = {e.id for e, answer in right if not accepts(call_list_grammar(e.entry["function"]), answer)}
    assert refused == GRAMMAR_CANNOT_WRITE & {e.id for e in examples}, sorted(refused ^ GRAMMAR_CANNOT_WRITE)[:10]


FUNCTIONS = [{"name": "geo.distance", "description": "d", "parameters": {"type": "dict", "properties": {
    "start": {"type": "string"}, "end": {"type": "string"},
    "units": {"type": "string", "enum": ["km", "miles"]},
    "precision": {"type": "integer"}, "scale": {"type": "float"}, "exact": {"type": "boolean"},
    "stops": {"type": "array", "items": {"type": "string"}}, "options": {"type": "dict"},
    "weights": {"type": "array", "items": {"type": "float"}}, "origin": {"type": "tuple", "items": {"type": "float"}},
    "tags": {"type": "array", "items": {"type": "string"}, "enum": ["toll", "ferry"]}},
    "required": ["start", "end"]}},
    {"name": "now", "description": "time", "parameters": {"type": "dict", "properties": {}, "required": []}}]


@pytest.mark.parametrize("text, allowed", [
    ("[geo.distance(start='Paris', end='Rome')]", True),
    ('[geo.distance(start="Paris", end="Rome", units="km")]', True),
    ("[geo.distance(start='a', end='b', precision=2, scale=3, exact=True, stops=['c', 'd'], "
     "options={'toll': False})]", True),  # an integer where a float is declared, as bfcl's checker allows
    ("[geo.distance(start='a', end='b'), now()]", True),  # parallel calls
    ("I cannot answer this with the functions I have.", True),  # declining is prose
    ("[]", True), ("", True),  # no call, as bfcl reads both
    ("[geo.distance(start='a', end='b', units=None, weights=[1.5, -2.0e3], origin=(0.5,), tags=['ferry'])]", True),
    ("[geo.distance(start='a\\tb', end='\\x41\\u00e9')]", True),  # escapes Python reads
    ("[geo.distance(start='C:\\Users', end='b')]", False),  # \U without its digits: a SyntaxError
    ("[geo.distance(start='a', end='b', precision=007)]", False),  # leading zeros: a SyntaxError
    ("[geo.distance(start='a', end='b', weights=[1, 2.5])]", True),  # bfcl takes ints where the ground truth has them
    ("[geo.distance(start='a', end='b', origin=(0.5))]", False),  # no tuple without its comma
    ("[geo.distance(start='a', end='b', tags='ferry')]", False),  # an array's enum lists its items
    ("[geo.distance(start=None, end='b')]", False),  # None only for optional parameters
    (" [now(speed=1)]", False), ("\n[now(speed=1)]", False), ("```\n[now(speed=1)]\n```", False),  # no way around
    ("[geo.distance(start='Paris')]", False),  # a required parameter missing
    ("[geo.distance(start='a', end='b', speed=3)]", False),  # a parameter the schema lacks
    ("[geo.distance(start='a', end='b', units='yards')]", False),  # outside the enum
    ("[geo.distance(start='a', end='b', precision=2.5)]", False),  # a float where an integer is declared
    ("[geo.distance(start='a', end='b', scale='3')]", False),  # a string where a number is declared
    ("[geo.distance(start='a', start='b', end='c')]", False),  # a keyword twice
    ("[geo.distance(end='b', start='a')]", False),  # not the schema's order (the grammar's simplification)
    ("[distance(start='a', end='b')]", False),  # a function not offered
    ("[geo.distance(start='a', end=b)]", False),  # a bare name is no literal
    ("[now()] and more text", False),  # nothing after the call list
    ("[geo.distance(start='a', end='b')", False),  # unfinished
])
def test_grammar_allows_calls_of_offered_functions_only(accepts, text, allowed):
    assert accepts(call_list_grammar(FUNCTIONS), text) is allowed


@pytest.mark.parametrize("category", ["irrelevance", "live_irrelevance", "live_relevance"])
def test_every_relevance_entry_lets_the_model_decline(accepts, category):
    """Every entry's grammar parses and allows prose, "[]" and an empty answer (some offer no function)."""
    for example in load_category(category, None, 0):
        grammar = call_list_grammar(example.entry["function"])
        assert all(accepts(grammar, text) for text in ("None of these functions can help.", "[]", "")), example.id


@pytest.mark.slow
def test_constrained_evaluation_writes_only_calls_or_prose(tmp_path):
    """End to end on the embedded model: grammar=True is recorded and every answer is prose or a call list
    that decodes to offered functions with their required parameters."""
    config = EvalConfig(categories=["simple_python", "parallel"], limit=2, max_new_tokens=48, grammar=True,
                        stop_when_hopeless=False)
    evaluate(config, tmp_path, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["prediction_keys"]["grammar"] == GRAMMAR_VERSION
    for category in ("simple_python", "parallel"):
        examples = {e.id: e for e in load_category(category, 2, 0)}
        for row in read_jsonl(tmp_path / "predictions" / f"{category}.jsonl"):
            if row["raw"].startswith("[") and row["completion_tokens"] < 48:  # a finished call list
                assert row["decoded"], row
            if row.get("decoded"):  # whatever decodes as calls obeys the grammar, not only text starting "["
                functions = {f["name"]: f["parameters"] for f in examples[row["id"]].entry["function"]}
                for call in row["decoded"]:
                    ((name, arguments),) = call.items()
                    assert set(functions[name]["required"]) <= set(arguments) <= set(functions[name]["properties"])


def test_grammar_needs_llama_cpp(tmp_path):
    with pytest.raises(ValueError, match="llama_cpp backend"):
        evaluate(EvalConfig(categories=["simple_python"], limit=1, backend="transformers", grammar=True), tmp_path)


def test_grammar_off_leaves_the_prediction_keys_as_they_were():
    """Evaluations made before the option existed resume: off, it is not part of their key."""
    assert "grammar" not in EvalConfig().prediction_keys()
    assert EvalConfig(grammar=True).prediction_keys()["grammar"] == GRAMMAR_VERSION


def test_multi_turn_steps_are_constrained_to_the_functions_offered_so_far():
    """A held-out function enters the grammar at the turn that offers it, not before."""
    from tinyllm_utils.backends.base import Generation
    from tinyllm_utils.evaluation.multi_turn import run_multi_turn

    (example,) = load_category("multi_turn_miss_func", 1, 0)
    ((turn, (held_out, *_)),) = example.entry["missed_function"].items()
    seen = []

    class Recorder:
        tokenizer = None

        def generate(self, prompts, stop_when_hopeless=False, grammars=None):
            seen.append(grammars[0])
            return [Generation("I am done.", 10, 3, 0.0)]  # prose: each turn ends after one step

    run_multi_turn(example, Recorder(), "gemma", grammar=True)
    assert len(seen) == len(example.entry["question"])
    call = f'"{held_out["name"]}("'  # how the grammar spells the start of its call
    assert [call in grammar for grammar in seen] == [i >= int(turn) for i in range(len(seen))]
