"""BFCL v4 data from the pinned `bfcl-eval` package: categories, entries, ground truth, seeded samples."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from tinyllm_utils.bfcl import shim as bfcl

SINGLE_TURN_CATEGORIES = [
    "simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
    "irrelevance", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
    "live_irrelevance", "live_relevance",
]
MULTI_TURN_CATEGORIES = ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"]
ALL_CATEGORIES = SINGLE_TURN_CATEGORIES + MULTI_TURN_CATEGORIES
NON_LIVE_CATEGORIES = SINGLE_TURN_CATEGORIES[:7]
LIVE_CATEGORIES = SINGLE_TURN_CATEGORIES[7:]
CATEGORY_GROUPS = {"non_live": NON_LIVE_CATEGORIES, "live": LIVE_CATEGORIES, "multi_turn": MULTI_TURN_CATEGORIES,
                   "single_turn": SINGLE_TURN_CATEGORIES, "all": ALL_CATEGORIES}


@dataclass
class Example:
    id: str
    category: str
    entry: dict  # as prompted: function docs carry bfcl's language hint, as in bfcl's generation step
    scoring_entry: dict  # as scored: without the hint, as in bfcl's evaluation step
    ground_truth: list | None  # None for relevance/irrelevance (no possible answer)


def is_multi_turn(category: str) -> bool:
    return category.startswith("multi_turn")


NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")  # correct = no call; every other category needs one


def expects_call(category: str) -> bool:
    return category not in NO_CALL_CATEGORIES


def is_relevance(category: str) -> bool:
    return "relevance" in category  # relevance and irrelevance: scored by call / no call


def language_of(category: str) -> str:
    return {"simple_java": "java", "simple_javascript": "javascript"}.get(category, "python")


def expand_categories(names) -> list[str]:
    """Accept category names and group names (non_live, live, multi_turn, single_turn, all)."""
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        members = CATEGORY_GROUPS.get(name, [name])
        for category in members:
            if category not in ALL_CATEGORIES:
                raise ValueError(f"unknown BFCL category {category!r}; expected one of {ALL_CATEGORIES} "
                                 f"or a group {list(CATEGORY_GROUPS)}")
            if category not in out:
                out.append(category)
    return out


@cache
def _load(category: str) -> tuple[Example, ...]:
    prompted = bfcl.load_dataset_entry(category, include_prereq=False, include_language_specific_hint=True)
    scored = bfcl.load_dataset_entry(category, include_prereq=False, include_language_specific_hint=False)
    answers = {} if is_relevance(category) else {a["id"]: a["ground_truth"] for a in bfcl.load_ground_truth_entry(category)}
    return tuple(Example(p["id"], category, p, s, answers.get(p["id"])) for p, s in zip(prompted, scored))


def load_category(category: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """All entries of a category in BFCL order, or a seeded random sample of `limit` of them (kept in order)."""
    examples = list(_load(category))
    if limit is not None and limit < len(examples):
        keep = sorted(random.Random(f"{seed}:{category}").sample(range(len(examples)), limit))
        examples = [examples[i] for i in keep]
    return examples


def category_size(category: str) -> int:
    return len(_load(category))
