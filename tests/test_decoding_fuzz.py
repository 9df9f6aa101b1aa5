"""Property-based fuzzing: any model text ends as a decoded call list or a DecodeError, in every caller.

Greedy decoding makes a crash permanent (the same entry aborts every resume), so the decoder, the early-stop
rule, the multi-turn step decoder and the scorer must never raise anything else. Hypothesis generates random
text, mutated call strings and structured call lists with hostile literals (unhashable dict keys, 1e999,
4 300-digit integers, deep nesting, unicode, unbalanced brackets, very long outputs); derandomized and without
an example database, so CI runs the same examples every time and writes nothing.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.decoding import DecodeError, cannot_become_calls, decode_ast, to_execution_calls
from tinyllm_utils.bfcl.scoring import decode_step, score_example

RUNS: dict[str, int] = {}
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

SEEDS = [
    "[get_weather(city='Paris')]",
    "[a(x=1), b(y=-2.5, z=[1, 2, {'k': (3, 4)}])]",
    "```\n[math.factorial(number=5)]\n```",
    "[f(flag=True, nothing=None, text=\"it's\")]",
    "[calculate_area(base=10, height=5, unit='units'), g(x=[[1, 2], [3, 4]])]",
]
HOSTILE = ["{[1]: 2}", "{{}: 1}", "1e999", "-1e999", "9" * 5000, "(" * 300, ")" * 50, "[" * 250, "**kw",
           "__import__('os').system('rm -rf /')", "lambda: 0", "f(a=g(b=1))", "x.y.z", "'" * 3, '"""', "\\",
           "\x00", "\u202e", "🙂", "ñ", "...", "None", "True", "0x1F", "1_000", "1j", "b'x'", "f'{x}'",
           "[f(a=1) for f in g]", "a if b else c", "*args", "(yield)", "await x", ":=", "#", "\n", "<end_of_turn>"]


def scaled(n: int) -> int:
    # TINYLLM_FUZZ_SCALE=0.1 for a quick local pass; CI runs the full counts (>= 10 000 outputs in all).
    return max(1, int(n * float(os.environ.get("TINYLLM_FUZZ_SCALE", "1"))))


def _count(name: str) -> None:
    RUNS[name] = RUNS.get(name, 0) + 1


def assert_decodes_or_decode_error(text: str, language: str = "python") -> None:
    try:
        decoded = decode_ast(text, language)
    except DecodeError as exc:
        assert isinstance(exc.error_type, str) and exc.error_type.startswith("ast_decoder:")
        return
    assert isinstance(decoded, list)
    if language == "python":
        calls, refused = to_execution_calls(decoded, {"f", "get_weather", "a", "b"})
        assert all(isinstance(c, str) for c in calls) and all(isinstance(r, str) for r in refused)


@st.composite
def mutated_calls(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        piece = draw(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)))
        if action == "insert":
            text = text[:i] + piece + text[i:]
        elif action == "delete":
            text = text[:i] + text[j:]
        elif action == "replace":
            text = text[:i] + piece + text[j:]
        elif action == "duplicate":
            text = text[:j] + text[i:j] * draw(st.integers(1, 50)) + text[j:]
        else:
            text = text[:i]
    return text


LITERALS = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False).map(repr),
                    st.text(max_size=12).map(repr), st.sampled_from(HOSTILE[:12] + ["None", "True", "x"]))
NAMES = st.one_of(st.sampled_from(["f", "get_weather", "math.factorial", "a.b.c", "_x1", "class", "π", "1f", ""]),
                  st.text(min_size=1, max_size=6))


@st.composite
def literal_source(draw, depth: int = 0):
    """A literal's source text: scalars, or lists / tuples / dicts of them (keys included), up to depth 3."""
    if depth >= 3 or draw(st.integers(0, 2)) == 0:
        return draw(LITERALS)
    items = [draw(literal_source(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
    shape = draw(st.sampled_from(["list", "tuple", "dict"]))
    if shape == "list":
        return "[" + ", ".join(items) + "]"
    if shape == "tuple":
        return "(" + ", ".join(items) + ",)"
    return "{" + ", ".join(f"{k}: {v}" for k, v in zip(items, reversed(items))) + "}"


@st.composite
def structured_calls(draw):
    calls = []
    for _ in range(draw(st.integers(0, 3))):
        args = ", ".join(f"{draw(NAMES)}={draw(literal_source())}" for _ in range(draw(st.integers(0, 3))))
        calls.append(f"{draw(NAMES)}({args})")
    text = "[" + ", ".join(calls) + "]"
    if draw(st.integers(0, 9)) == 0:
        text = text * draw(st.integers(2, 200))  # very long outputs
    return text


@settings(max_examples=scaled(3000), **FUZZ)
@given(st.text(max_size=400))
def test_random_text(text):
    _count("random text")
    assert_decodes_or_decode_error(text)
    assert isinstance(cannot_become_calls(text), bool)


@settings(max_examples=scaled(4000), **FUZZ)
@given(mutated_calls())
def test_mutated_call_strings(text):
    _count("mutated calls")
    assert_decodes_or_decode_error(text)
    assert isinstance(cannot_become_calls(text), bool)
    assert isinstance(decode_step(text, {"get_weather", "a", "b", "f"}), list)


@settings(max_examples=scaled(3000), **FUZZ)
@given(structured_calls())
def test_structured_calls_with_hostile_literals(text):
    _count("structured calls")
    assert_decodes_or_decode_error(text)


@settings(max_examples=scaled(300), **FUZZ)
@given(st.one_of(mutated_calls(), structured_calls()), st.sampled_from(["java", "javascript"]))
def test_java_and_javascript_parsers(text, language):
    _count("java/javascript")
    assert_decodes_or_decode_error(text, language)


@pytest.fixture(scope="module")
def examples():
    return [load_category(c, 1, seed=0)[0] for c in ("simple_python", "parallel_multiple", "irrelevance")]


@settings(max_examples=scaled(600), **FUZZ)
@given(text=st.one_of(st.text(max_size=200), mutated_calls(), structured_calls()), which=st.integers(0, 2))
def test_scorer_returns_a_verdict(examples, text, which):
    _count("scored")
    scored = score_example(examples[which], text)
    assert isinstance(scored["valid"], bool)


@pytest.mark.parametrize("text", ["[f(a={[1]: 2})]", "[f(a={{}: 1})]", "[f(a=1e999)]", "[f(a=" + "9" * 5000 + ")]",
                                  "[f(a=" + "[" * 300 + ")]", "[f(a=1)" * 10000, "\x00[f(a=1)]"])
def test_known_crashers(text):
    assert_decodes_or_decode_error(text)


def test_at_least_ten_thousand_generated_outputs():
    """Runs last in this module: the fuzz tests above really ran their examples."""
    print("fuzz examples per test:", RUNS)
    assert sum(RUNS.values()) >= scaled(10_000), RUNS
