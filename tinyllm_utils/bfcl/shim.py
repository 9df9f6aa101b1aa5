"""The one place where `bfcl-eval` is imported.

bfcl-eval's checkers live beside every hosted-API model handler: importing `ast_checker` pulls in
`constants.model_config`, which imports ~80 handlers and their SDKs (slow, and an undeclared `soundfile`).
The checker only needs that table for `underscore_to_dot`, which is False for every prompting-mode model,
so we register a tiny stand-in module before the first import. bfcl-eval also creates `result/` and
`score/` folders under `BFCL_PROJECT_ROOT` at import time; we point that at a cache folder so nothing is
written inside site-packages or the working tree.

Everything else in tinyllm_utils imports bfcl-eval through this module.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import types
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(os.environ.get("TINYLLM_CACHE", Path.home() / ".cache" / "tinyllm_utils"))
                                                / "bfcl_root"))


class _PromptingModelConfig:
    """What the AST checker reads from a model's config: prompting models keep dotted names."""

    underscore_to_dot = False


class _AnyModelConfig(dict):
    def __missing__(self, key):
        return _PromptingModelConfig()


if "bfcl_eval.constants.model_config" not in sys.modules:
    _stub = types.ModuleType("bfcl_eval.constants.model_config")
    _stub.MODEL_CONFIG_MAPPING = _AnyModelConfig()
    _stub.__doc__ = "tinyllm_utils stand-in: avoids importing every hosted-API handler."
    sys.modules["bfcl_eval.constants.model_config"] = _stub

from bfcl_eval.constants import default_prompts  # noqa: E402
from bfcl_eval.constants.category_mapping import (  # noqa: E402
    LIVE_CATEGORY,
    MULTI_TURN_CATEGORY,
    NON_LIVE_CATEGORY,
    VERSION_PREFIX,
)
from bfcl_eval.constants.enums import Language  # noqa: E402
from bfcl_eval.constants.eval_config import PROMPT_PATH  # noqa: E402  (bfcl-eval's data folder)
from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker  # noqa: E402
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils  # noqa: E402
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker  # noqa: E402
from bfcl_eval.model_handler.parser.java_parser import parse_java_function_call  # noqa: E402
from bfcl_eval.model_handler.parser.js_parser import parse_javascript_function_call  # noqa: E402
from bfcl_eval.model_handler.utils import (  # noqa: E402
    combine_consecutive_user_prompts,
    system_prompt_pre_processing_chat_model,
)
from bfcl_eval.utils import (  # noqa: E402
    add_language_specific_hint_to_function_doc,
    is_empty_output,
    is_function_calling_format_output,
    load_dataset_entry,
    load_file,
    load_ground_truth_entry,
    populate_test_cases_with_predefined_functions,
)

BFCL_EVAL_VERSION = version("bfcl-eval")
MAXIMUM_STEP_LIMIT = default_prompts.MAXIMUM_STEP_LIMIT
ADDITIONAL_FUNCTION_PROMPT = default_prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING
execute_multi_turn_func_call = multi_turn_utils.execute_multi_turn_func_call


def add_python_hint(functions: list[dict]) -> list[dict]:
    """Python function docs as evaluation prompts them: bfcl's own language hint ("Note that the provided
    function is in Python 3 syntax.") applied by bfcl's `add_language_specific_hint_to_function_doc`, as its
    loader does with `include_language_specific_hint=True`. bfcl picks the hint from the entry id's category;
    training rows are Python, so the id is a Python category's. Returns hinted copies; the input is untouched."""
    entry = {"id": "simple_python_0", "function": copy.deepcopy(functions)}
    return add_language_specific_hint_to_function_doc([entry])[0]["function"]


def local_inference_handler(name: str, model_name: str = "tinyllm", is_fc_model: bool = False):
    """A fresh instance of one of bfcl's local-inference handlers, e.g. `"qwen_fc.QwenFCHandler"`.

    Imported on first use (the handlers pull in `openai` for a client that is built but never called here).
    Only the handler's prompt formatting, message bookkeeping and decoding are used; nothing is served.
    """
    import importlib

    module_name, class_name = name.rsplit(".", 1)
    module = importlib.import_module(f"bfcl_eval.model_handler.local_inference.{module_name}")
    return getattr(module, class_name)(model_name=model_name, temperature=0.0, registry_name=model_name,
                                       is_fc_model=is_fc_model)


def clear_api_state(model_name: str) -> int:
    """Forget the simulated API instances bfcl cached for `model_name`.

    bfcl's executor keeps one instance per (model name, entry id, class) in its module globals and reuses
    it on the next call, so a second evaluation of the same entry in one process would start from the
    first one's final state. We call this before and after every multi-turn entry. Returns how many
    instances were removed.
    """
    prefix = re.sub(r"[-./:]", "_", model_name) + "_"
    stale = [k for k in vars(multi_turn_utils) if k.startswith(prefix) and k.endswith("_instance")]
    for key in stale:
        del vars(multi_turn_utils)[key]
    return len(stale)


__all__ = [
    "ADDITIONAL_FUNCTION_PROMPT",
    "BFCL_EVAL_VERSION",
    "LIVE_CATEGORY",
    "Language",
    "MAXIMUM_STEP_LIMIT",
    "MULTI_TURN_CATEGORY",
    "NON_LIVE_CATEGORY",
    "PROMPT_PATH",
    "VERSION_PREFIX",
    "add_language_specific_hint_to_function_doc",
    "add_python_hint",
    "ast_checker",
    "clear_api_state",
    "combine_consecutive_user_prompts",
    "execute_multi_turn_func_call",
    "is_empty_output",
    "is_function_calling_format_output",
    "load_dataset_entry",
    "load_file",
    "load_ground_truth_entry",
    "local_inference_handler",
    "multi_turn_checker",
    "parse_java_function_call",
    "parse_javascript_function_call",
    "populate_test_cases_with_predefined_functions",
    "system_prompt_pre_processing_chat_model",
]
