"""What a stage's code version covers: its notebook's code and the package modules that code imports, transitively,
and nothing else.

Each module counts by its normalized source, `ast.dump` of its syntax tree without docstrings, so comments,
docstrings and formatting never rerun a stage; any change to what the code does reruns every stage that imports the
module, directly or through another. Imports inside functions count (they run when the function does); imports under
`if TYPE_CHECKING:` do not (they never run). A package data file (a YAML or CSV under `tinyllm_utils/`) counts for a
module whose source names it, e.g. `configs/models.yaml` for the registry. The profiles file is parameters, not
code: its values reach a stage's key through the stage's own parameters.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path

PACKAGE = "tinyllm_utils"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = (".yaml", ".csv", ".json", ".md")
NOT_CODE = {"configs/profiles.yaml"}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def normalized(source: str) -> str:
    """The code of a Python source as `ast.dump` without docstrings: comments and layout are not in it."""
    return ast.dump(_without_docstrings(ast.parse(source)))


def module_path(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file of a package module (`tinyllm_utils.bfcl.decoding`), or None when there is none."""
    parts = name.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runtime_imports(tree: ast.AST):
    """(module, names) for every import of a package module that can run: a function's too, not those under
    `if TYPE_CHECKING:` (a type checker's only). `names` is empty for a plain `import`."""
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name, []


def imported_modules(tree: ast.AST, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The package modules a syntax tree imports (`from pkg import module` names the module), with the packages
    above them (importing `a.b.c` runs `a/b/__init__.py` first)."""
    found = set()
    for module, names in runtime_imports(tree):
        if not names:
            found.add(module)
        for name in names:
            submodule = f"{module}.{name}"
            found.add(submodule if module_path(submodule, package_dir) else module)
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in with_parents if module_path(name, package_dir)}


def _data_files(package_dir: Path) -> list[str]:
    return sorted(p.relative_to(package_dir).as_posix() for p in package_dir.rglob("*")
                  if p.is_file() and p.suffix in DATA_SUFFIXES and "__pycache__" not in p.parts
                  and p.relative_to(package_dir).as_posix() not in NOT_CODE)


def named_data_files(tree: ast.AST, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The package data files a module's string constants name: a file's relative path, or a folder holding it."""
    names = {node.value.rstrip("/") for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and 3 <= len(node.value) < 200}
    return [rel for rel in _data_files(package_dir)
            if rel in names or any(rel.startswith(name + "/") for name in names)]


@cache
def _module_record(path: Path, mtime_ns: int, package_dir: Path) -> tuple[str, frozenset[str], tuple[str, ...]]:
    tree = ast.parse(path.read_text())
    code = normalized(path.read_text())
    return code, frozenset(imported_modules(tree, package_dir)), tuple(named_data_files(tree, package_dir))


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def notebook_code(notebook: Path) -> str:
    """A notebook's code cells as one Python source (IPython magics and shell lines left out)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            lines += [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines) + "\n"


def code_versions(notebook: Path, package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """{"notebook": ..., "<module>": ..., "data:<file>": ...}: a sha256 of the normalized code of the notebook and
    of every package module it imports, transitively, and of the data files those modules name."""
    source = notebook_code(notebook)
    tree = ast.parse(source)
    versions = {"notebook": _sha(normalized(source))}
    pending, seen, data = sorted(imported_modules(tree, package_dir)), set(), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name, package_dir)
        code, imports, files = _module_record(path, path.stat().st_mtime_ns, package_dir)
        versions[name] = _sha(code)
        data.update(files)
        pending.extend(sorted(imports - seen))
    for rel in sorted(data):
        versions[f"data:{rel}"] = _sha((package_dir / rel).read_bytes())
    return dict(sorted(versions.items()))
