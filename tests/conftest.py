"""Shared test helpers: ground truth rendered as model output, and a fake backend (no model needed)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; fail fast instead of timing out

import ast
import importlib
import inspect

import pytest

from tinyllm_utils.backends.base import Generation
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.shim import execute_multi_turn_func_call  # noqa: F401  (import check)


def first_option(value):
    """One concrete value from a BFCL possible-answer list (the first that is not the 'optional' marker)."""
    options = [v for v in value if v != ""]
    if not options:
        return None
    return _concrete(options[0])


def _concrete(choice):
    # Inside a chosen value, dicts map each key to a list of possibilities again.
    if isinstance(choice, dict):
        return {k: first_option(v) if isinstance(v, list) else v for k, v in choice.items()}
    if isinstance(choice, list):
        return [_concrete(v) for v in choice]
    return choice


def render_ground_truth(ground_truth: list[dict]) -> str:
    """BFCL single-turn ground truth -> Python call text a perfect model would write."""
    calls = []
    for item in ground_truth:
        for name, params in item.items():
            args = {k: first_option(v) for k, v in params.items()}
            rendered = ", ".join(f"{k}={v!r}" for k, v in args.items() if v is not None)
            calls.append(f"{name}({rendered})")
    return "[" + ", ".join(calls) + "]"


def _c_family_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value.replace(".", "").replace("_", "").isalnum() and not value[0].isdigit() \
            else '"' + value.replace('"', '\\"') + '"'
    return str(value)


def render_c_family_ground_truth(ground_truth: list[dict]) -> str | None:
    """Java/JavaScript ground truth with scalar values as call text (None when a value is a list or dict)."""
    calls = []
    for item in ground_truth:
        for name, params in item.items():
            args = {k: first_option(v) for k, v in params.items()}
            if any(isinstance(v, (list, dict)) for v in args.values()):
                return None
            calls.append(f"{name}(" + ", ".join(f"{k}={_c_family_literal(v)}" for k, v in args.items()
                                                 if v is not None) + ")")
    return "[" + ", ".join(calls) + "]"


def keyword_call(call: str, involved_classes: list[str]) -> str:
    """A multi-turn ground-truth call (trusted data, may use positional args) in keyword form."""
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    node = ast.parse(call, mode="eval").body
    name = node.func.id
    for class_name in involved_classes:
        cls = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)
        if hasattr(cls, name):
            signature = inspect.signature(getattr(cls, name))
            bound = signature.bind(None, *[ast.literal_eval(a) for a in node.args],
                                   **{k.arg: ast.literal_eval(k.value) for k in node.keywords})
            args = {k: v for k, v in bound.arguments.items() if k != "self"}
            return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    raise LookupError(name)


def render_multi_turn_ground_truth(example) -> list[list[str]]:
    return [["[" + ", ".join(keyword_call(c, example.entry["involved_classes"]) for c in turn) + "]"] + ["done"]
            if turn else ["I have nothing to call."] for turn in example.ground_truth]


class FakeBackend:
    """Answers from a table {prompt substring: reply}; counts calls so tests can check resumption."""

    name = "fake"
    tokenizer = None

    def __init__(self, reply_for):
        self.reply_for, self.calls = reply_for, 0

    def generate(self, prompts, stop_when_hopeless=False):
        self.calls += len(prompts)
        return [Generation(self.reply_for(p), len(p) // 4, 8, 0.001) for p in prompts]

    def describe(self):
        return {"backend": self.name}


@pytest.fixture
def sample():
    def _sample(category, n=5, seed=1):
        return load_category(category, n, seed)
    return _sample
