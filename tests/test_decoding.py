"""Decoder parity with bfcl on benign output, and safety on hostile output (nothing is ever evaluated)."""

import os

import pytest
from bfcl_eval.model_handler.utils import default_decode_ast_prompting

from conftest import render_ground_truth
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.decoding import (
    DecodeError,
    UnsafeOutputError,
    cannot_become_calls,
    decode_ast,
    to_execution_calls,
)
from tinyllm_utils.bfcl.scoring import decode_step, score_example

HANDWRITTEN = [
    "[get_weather(city='Paris')]",
    "get_weather(city='Paris', unit=celsius)",
    "```\n[a(x=1), b(y=-2.5, z=[1, 2, {'k': (3, 4)}])]\n```",
    "[math.factorial(number=5)]",
    "[f(flag=True, nothing=None, text=\"it's\")]",
    "[f(1, 2, key='positional args are dropped, as bfcl does')]",
    "[]",
    "[f(a=...)]",
]


def benign_corpus():
    corpus = list(HANDWRITTEN)
    for category in ["simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
                     "live_parallel", "live_parallel_multiple"]:
        corpus += [render_ground_truth(e.ground_truth) for e in load_category(category, 25, seed=7)]
    return corpus


def test_parity_with_bfcl_decoder_on_benign_output():
    corpus = benign_corpus()
    assert len(corpus) > 150
    for text in corpus:
        assert decode_ast(text) == default_decode_ast_prompting(text), text


@pytest.mark.parametrize("text", ["I cannot help with that.", "f(a=1) g(b=2)", "'[f(a=1)]'", "[1, 2]", "x = f(a=1)"])
def test_both_decoders_reject_non_calls(text):
    with pytest.raises(DecodeError):
        decode_ast(text)
    with pytest.raises(Exception):
        default_decode_ast_prompting(text)


HOSTILE = [
    "[f(a=__import__('os').system('touch CANARY'))]",
    "[f(a=1 + __import__('os').system('touch CANARY'))]",  # BinOp: bfcl's decoder eval()s this one
    "[f(a=lambda: __import__('os').system('touch CANARY'))]",
    "[f(a=().__class__.__bases__[0].__subclasses__())]",
    "[f(a=[x for x in __import__('os').popen('touch CANARY')])]",
    "[f(**{'a': __import__('os').system('touch CANARY')})]",
    "[__import__('os').system(cmd='touch CANARY')]",
    "[getattr(__import__('os'), 'system')(cmd='touch CANARY')]",
    "[f(a=f'{__import__(\"os\").system(\"touch CANARY\")}')]",
    "[f(a={1, 2})]",
]


BFCL_CANNOT_READ = {HOSTILE[2], HOSTILE[4], HOSTILE[8], HOSTILE[9]}

# Non-literal answers without side effects: bfcl's decoder can run on them, so what it reads is checked directly.
NON_LITERAL = ["[f(a=x*2)]", "[f(a=5*2)]", "[f(a='ab'*2)]", "[f(a=Unit.C)]", "[f(a={1, 2})]", "[f(a=lambda: 1)]",
               "[f(a=[i for i in (1, 2)])]", "[f(a=f'{1}')]", "[f(a=1 < 2)]", "[f(a=True and False)]",
               "[f(a=1 if True else 2)]", "[f(a=-x)]", "[f(a=-'x')]", "[f(a=not True)]", "[f(a=~5)]",
               "[f(a=g(b=1))]", "[f(a=g(b=lambda: 1))]", "[f(a=g(1))]", "[f(a=x[0])]", "[f(**{'a': 1})]",
               "[f(a={**{'b': 1}})]", "[g()(a=1)]", "[f(a=b'x')]", "[f(a=1j)]", "[f(a=[1, x.y])]",
               "[f(a=1), g(b=lambda: 2)]", "[f(a=(1, Unit.C))]",
               # keys bfcl cannot hash; names bfcl's module holds (its eval finds them: a call)
               "[f(a={g(x=1): 2})]", "[f(a={[1] + [2]: 0})]", "[f(a={(1, g(x=1)): 0})]", "[f(a={g(1): 2, 'k': x.y})]",
               "[f(a=os.sep + 'x')]", "[f(a=Path('x') / 'y')]"]


@pytest.mark.parametrize("text", NON_LITERAL)
def test_a_refused_answer_counts_as_a_call_exactly_when_bfcls_decoder_reads_one(text):
    with pytest.raises(UnsafeOutputError) as refused:
        decode_ast(text)
    try:
        default_decode_ast_prompting(text)
        bfcl_reads = True
    except Exception:
        bfcl_reads = False
    assert refused.value.bfcl_decodes == bfcl_reads
    irrelevance = score_example(load_category("irrelevance", 1)[0], text)
    assert irrelevance["valid"] == (not bfcl_reads)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_output_is_never_evaluated_and_scores_wrong(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = load_category("simple_python", 1)[0]
    with pytest.raises(UnsafeOutputError):
        decode_ast(text)
    result = score_example(example, text)
    assert not result["valid"] and result["error_type"] == "ast_decoder:unsafe_expression"
    irrelevance = score_example(load_category("irrelevance", 1)[0], text)
    # a call for irrelevance where bfcl's decoder reads one: lambdas, comprehensions, f-strings and sets it cannot
    assert irrelevance["valid"] == (text in BFCL_CANNOT_READ), "relevance follows what bfcl's decoder reads"
    assert decode_step(text, {"f", "cd", "ls"}) == []
    assert not (tmp_path / "CANARY").exists()


def test_the_canary_test_can_fail(tmp_path, monkeypatch):
    """bfcl's own decoder runs the BinOp payload: proof that the hostile corpus is a real attack."""
    monkeypatch.chdir(tmp_path)
    try:
        default_decode_ast_prompting(HOSTILE[1])
    except Exception:
        pass
    assert (tmp_path / "CANARY").exists()
    os.remove(tmp_path / "CANARY")


def test_execution_calls_are_reserialized_and_allow_listed():
    decoded = decode_ast("[cd(folder='docs'), rm(file='x'), exit(), ls(a=[1, 'two'])]")
    calls, refused = to_execution_calls(decoded, {"cd", "ls"})
    assert calls == ["cd(folder='docs')", "ls(a=[1, 'two'])"]
    assert refused == ["rm", "exit"]


def test_multi_turn_step_with_hostile_call_executes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert decode_step("[cd(folder=__import__('os').system('touch CANARY'))]", {"cd"}) == []
    assert decode_step("[cd(folder='x'), touch(file_name='a')]", {"cd"}) == ["cd(folder='x')"]
    assert not (tmp_path / "CANARY").exists()


def test_early_stop_never_fires_on_a_prefix_of_decodable_output():
    for text in benign_corpus():
        for end in range(len(text) + 1):
            assert not cannot_become_calls(text[:end]), (text, text[:end])


@pytest.mark.parametrize("text", ["You are an expert in composing functions.", "Sure! Here is the call",
                                  "1 2 3", "[get_weather(city='Paris')] The weather"])
def test_early_stop_fires_on_prose(text):
    assert cannot_become_calls(text)
    with pytest.raises(DecodeError):
        decode_ast(text)
