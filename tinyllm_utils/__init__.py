"""tinyllm_utils: the TinyLLM Study's helpers (data, prompts, inference backends, scoring, pipeline, figures).

Notebooks call into this package; no logic lives only in a notebook.
"""

__version__ = "0.1.0"
