"""Turn model text into function calls without ever running it.

Model output is untrusted. bfcl-eval's own decoder runs BinOp and Lambda argument expressions through Python's
eval, and its multi-turn executor evaluates whole call strings behind a short denylist, so neither sees raw
model text:

* `decode_ast` parses Python-style output with `ast` into `[{name: {arg: literal}}]`, BFCL's decoded shape,
  accepting only literal argument values (constants, negative numbers, lists, tuples, dicts, bare names,
  which BFCL reads as strings). Java and JavaScript go through bfcl's tree-sitter parsers, which only build
  strings.
* `to_execution_calls` re-serializes a decoded call list as `name(arg=repr(value), ...)` for bfcl's
  multi-turn executor, keeping only names from an allow-list (the offered API methods).

Everything else (nested calls, attribute access, arithmetic, lambdas, comprehensions, `**kwargs`) raises
`UnsafeOutputError`: never evaluated, wrong for the AST categories. For (ir)relevance it counts as a call when
bfcl's own decoder would have read one (`bfcl_decodes`, from the syntax tree alone: nested calls, subscripts and
arithmetic yes; attributes, lambdas, sets, comprehensions, f-strings, comparisons no, as its resolver raises).
Arithmetic bfcl `eval`s: one that names nothing bfcl's module knows fails there (NameError), other failures
(`1/0`) cannot be seen without running it and count as a call.
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import keyword
import tokenize

from tinyllm_utils.bfcl import shim as bfcl

DECODER_FAILED = "ast_decoder:decoder_failed"
UNSAFE_EXPRESSION = "ast_decoder:unsafe_expression"
WRONG_OUTPUT_FORMAT = "ast_decoder:decoder_wrong_output_format"

_SCALARS = (str, int, float, bool, type(None))


class DecodeError(ValueError):
    """The text is not a list of function calls."""

    error_type = DECODER_FAILED


class UnsafeOutputError(DecodeError):
    """The text is call-shaped but holds an expression that is not a literal. `bfcl_decodes`: whether bfcl's
    decoder would have read calls from it (relevance scoring follows bfcl there)."""

    error_type = UNSAFE_EXPRESSION
    bfcl_decodes = True


def _wrap_in_brackets(text: str) -> str:
    # Same normalisation as bfcl's default_decode_ast_prompting.
    text = text.strip("`\n ")
    if not text.startswith("["):
        text = "[" + text
    if not text.endswith("]"):
        text = text + "]"
    return text


def _literal(node: ast.AST):
    """The Python value of a literal node; anything that would need evaluation is refused."""
    if isinstance(node, ast.Constant):
        if node.value is Ellipsis:
            return "..."
        if not isinstance(node.value, _SCALARS):
            raise UnsafeOutputError(f"unsupported constant type {type(node.value).__name__}")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = node.operand
        if isinstance(operand, ast.Constant) and type(operand.value) in (int, float):
            return -operand.value if isinstance(node.op, ast.USub) else operand.value
        raise UnsafeOutputError("unary operator on a non-number")
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise UnsafeOutputError("dict unpacking (**) is not a literal")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name):
        # BFCL reads a bare identifier as its name, e.g. unit=celsius -> "celsius".
        return node.id
    raise UnsafeOutputError(f"non-literal argument ({type(node).__name__}) is never evaluated")


def _function_name(func: ast.AST) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise UnsafeOutputError(f"called object is a {type(func).__name__}, not a name")
    parts.append(func.id)
    return ".".join(reversed(parts))


def _call(node: ast.Call) -> dict:
    name = _function_name(node.func)
    args = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise UnsafeOutputError("**kwargs unpacking is not a literal")
        args[keyword.arg] = _literal(keyword.value)
    # Positional arguments are ignored, as bfcl's decoder does (they are never evaluated either).
    return {name: args}


def decode_python(text: str) -> list[dict]:
    """Parse `[f(a=1), g(b='x')]` (brackets optional) into `[{'f': {'a': 1}}, {'g': {'b': 'x'}}]`.

    Any text ends as a call list or a DecodeError (never another exception): callers rely on it, and a greedy
    decoder would otherwise crash on the same entry at every resume.
    """
    source = _wrap_in_brackets(text).strip().strip("'")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise DecodeError(f"not Python syntax: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        return _calls(tree.body)
    except UnsafeOutputError as exc:
        try:
            exc.bfcl_decodes = _bfcl_reads_calls(tree.body)
        except RecursionError:  # nesting deeper than the interpreter allows: bfcl's recursion fails too
            exc.bfcl_decodes = False
        raise
    except DecodeError:
        raise
    except (TypeError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        # e.g. an unhashable dict key `{[1]: 2}`, or nesting deeper than the interpreter's recursion limit
        raise DecodeError(f"not a literal call list: {type(exc).__name__}: {str(exc)[:200]}") from None


def _calls(body: ast.AST) -> list[dict]:
    if isinstance(body, ast.Call):
        return [_call(body)]
    if not isinstance(body, (ast.List, ast.Tuple)):
        raise DecodeError(f"expected a list of calls, got {type(body).__name__}")
    calls = []
    for element in body.elts:
        if not isinstance(element, ast.Call):
            raise DecodeError(f"list element is a {type(element).__name__}, not a call")
        calls.append(_call(element))
    return calls


# --- What bfcl's decoder would make of a refused text, read from the tree (bfcl_eval.model_handler.utils:
# ast_parse -> resolve_ast_call -> resolve_ast_by_type), so that (ir)relevance scores it as bfcl does.

def _bfcl_reads_calls(body: ast.AST) -> bool:
    if isinstance(body, ast.Call):
        return _bfcl_reads_call(body)
    return all(isinstance(e, ast.Call) and _bfcl_reads_call(e) for e in body.elts)  # _calls took a list


def _bfcl_reads_call(call: ast.Call) -> bool:
    return all(_bfcl_resolves(k.value) for k in call.keywords)  # any callee (a nameless one reads as "")


def _bfcl_resolves(node: ast.AST) -> bool:
    """Whether resolve_ast_by_type returns for this argument value (instead of raising)."""
    if isinstance(node, (ast.Constant, ast.Name, ast.Subscript)):
        return True
    if isinstance(node, ast.UnaryOp):  # bfcl negates `operand.value`, whatever the operator
        return isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float, complex))
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(_bfcl_resolves(e) for e in node.elts)
    if isinstance(node, ast.Dict):  # bfcl builds the dict: a key must resolve to something hashable
        return all(k is not None and _bfcl_resolves(k) and _bfcl_hashable(k) for k in node.keys) \
            and all(map(_bfcl_resolves, node.values))
    if isinstance(node, ast.Call):  # without keywords bfcl keeps the call's text, with them it resolves them
        return not node.keywords or _bfcl_reads_call(node)
    if isinstance(node, ast.BinOp):  # bfcl evaluates it in its module: an unknown name raises NameError there
        return all(n.id in _bfcl_eval_names() for n in ast.walk(node) if isinstance(n, ast.Name))
    return False  # Attribute, Lambda, Set, comprehensions, f-strings, comparisons, ...: "Unsupported AST type"


def _bfcl_hashable(key: ast.AST) -> bool:
    """Whether the value bfcl resolves a dict key to can be a key: not a list, dict or keyword call (a dict)."""
    if isinstance(key, ast.Tuple):
        return all(map(_bfcl_hashable, key.elts))
    if isinstance(key, ast.BinOp):  # a list or dict in the arithmetic gives a list or dict (`[1] + [2]`)
        return not any(isinstance(n, (ast.List, ast.Dict)) for n in ast.walk(key))
    return not (isinstance(key, (ast.List, ast.Dict)) or (isinstance(key, ast.Call) and key.keywords))


@functools.cache
def _bfcl_eval_names() -> frozenset[str]:
    """The names bfcl's `eval` of an argument sees: its decoder module's globals and the builtins (read, not run)."""
    from bfcl_eval.model_handler import utils as bfcl_utils

    return frozenset(vars(bfcl_utils)) | frozenset(vars(builtins))


def decode_ast(text: str, language: str = "python") -> list[dict]:
    """Decode single-turn output for the AST checker; `language` is python, java or javascript."""
    if not isinstance(text, str):
        raise DecodeError(f"model output is {type(text).__name__}, not text")
    if language == "python":
        return decode_python(text)
    wrapped = _wrap_in_brackets(text)[1:-1]
    parser = {"java": bfcl.parse_java_function_call, "javascript": bfcl.parse_javascript_function_call}[language]
    try:
        decoded = parser(wrapped)
    except Exception as exc:  # tree-sitter parsers raise plain Exceptions on bad input
        raise DecodeError(f"not {language} call syntax: {exc}") from None
    if not decoded:  # bfcl's parsers say "no call" as [], {} or None: one shape for the scorer
        return []
    if not isinstance(decoded, list):
        raise DecodeError(f"{language} parser returned {type(decoded).__name__}, not a call list")
    return decoded


def to_execution_calls(decoded: list[dict], allowed_names: set[str]) -> tuple[list[str], list[str]]:
    """Re-serialize decoded calls for bfcl's executor.

    Returns (calls to execute, names refused). Only names in `allowed_names` are kept, and each argument is
    written with `repr` of a literal, so the executor's `eval` sees nothing the model wrote verbatim.
    """
    calls, refused = [], []
    for item in decoded:
        for name, args in item.items():
            if name not in allowed_names or not name.isidentifier():
                refused.append(name)
                continue
            try:
                rendered = ", ".join(f"{key}={value!r}" for key, value in args.items() if key.isidentifier())
            except ValueError:  # repr of an int beyond Python's 4300-digit limit: not a call we can pass on
                refused.append(name)
                continue
            calls.append(f"{name}({rendered})")
    return calls, refused


# --- Early stopping -------------------------------------------------------------------------------------
# A base model rarely emits end-of-turn: it writes prose until the token cap. Once the text so far can never
# become a decodable call list, the score is already decided (undecodable: wrong for AST categories, "no
# call" for relevance), so generation can stop. The test below is deliberately conservative: two complete
# tokens that may never stand side by side in a Python expression (`You are`, `1 2`, `) foo`).
_KEYWORD_NAMES = set(keyword.kwlist) - {"True", "False", "None"}
_IGNORED = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def _is_operand(tok: tokenize.TokenInfo) -> bool:
    if tok.type == tokenize.NAME:
        return tok.string not in _KEYWORD_NAMES
    return tok.type in (tokenize.NUMBER, tokenize.STRING)


def cannot_become_calls(text: str) -> bool:
    """True when no continuation of `text` decodes as a Python call list (so generation may stop early).

    Only complete tokens are examined (the last one may still grow, `i` -> `if`), and scanning stops at the
    first token the tokenizer cannot finish (an open single-quoted string), so a True answer is certain.
    """
    try:
        return _cannot_become_calls(text)
    except Exception:  # noqa: BLE001 - unsure means "keep generating": stopping early must be certain
        return False


def _cannot_become_calls(text: str) -> bool:
    source = text.lstrip("`\n ")
    if not source.startswith("["):
        source = "[" + source
    tokens = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in _IGNORED:
                continue
            if tok.type == tokenize.ERRORTOKEN and tok.string.strip() in ("", "'", '"'):
                break  # an open single-quoted string: what follows may still close it
            previous = tokens[-1] if tokens else None
            if previous is not None and previous.type == tokenize.ERRORTOKEN \
                    and not (previous.string == "`" and tok.string == "`"):
                # A stray character (`!`, `?`, `$`) followed by more text is never valid outside a string;
                # trailing backticks are fine (bfcl strips them), text after them is not.
                return True
            tokens.append(tok)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    complete = tokens[:-1]
    for left, right in zip(complete, complete[1:]):
        if left.type == tokenize.NUMBER and left.end == right.start:
            continue  # `8.854e-` tokenizes as 8.854, e: the number may still be growing
        left_ends_operand = _is_operand(left) or left.string in (")", "]", "}")
        both_strings = left.type == tokenize.STRING and right.type == tokenize.STRING
        if left_ends_operand and _is_operand(right) and not both_strings:
            return True
    return False
