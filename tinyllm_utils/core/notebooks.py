"""Notebooks as reviewable text: each `notebooks/NN_stage.ipynb` is paired with a jupytext `py:percent` file.

Readers edit either side in Jupyter (jupytext keeps them in sync) or run `jupytext --sync notebooks/*.py`
after editing the `.py` by hand; reviewers diff the `.py`. The pipeline refuses to run a pair that disagrees,
and tests/test_notebooks.py checks every pair.
"""

from __future__ import annotations

from pathlib import Path


def _cells(notebook) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(sorted(c.metadata.get("tags", [])))) for c in notebook.cells]


def unsynced_cells(ipynb: str | Path) -> list[str]:
    """Where a notebook and its paired `.py` differ (cell type, source or tags); empty when they agree."""
    import jupytext
    import nbformat

    ipynb = Path(ipynb)
    py = ipynb.with_suffix(".py")
    if not py.exists():
        return [f"{py.name} is missing"]
    left, right = _cells(nbformat.read(ipynb, as_version=4)), _cells(jupytext.read(py))
    problems = [f"cell {i + 1}: {a[0]} cell differs" for i, (a, b) in enumerate(zip(left, right)) if a != b]
    if len(left) != len(right):
        problems.append(f"{ipynb.name} has {len(left)} cells, {py.name} has {len(right)}")
    return problems
