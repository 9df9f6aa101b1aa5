"""`make_backend`: the backend a name asks for, built for a model spec.
"""

from __future__ import annotations

from tinyllm_utils.backends.hf import TransformersBackend
from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
from tinyllm_utils.models.registry import ModelSpec


def make_backend(spec: ModelSpec, backend: str = "llama_cpp", max_new_tokens: int = 256, seed: int = 0,
                 batch_size: int = 8, n_ctx: int = 32768, n_threads: int | None = None, parallel: int = 1,
                 decline_bias: float | None = None):
    if backend == "llama_cpp":
        return LlamaCppBackend(spec, max_new_tokens=max_new_tokens, seed=seed, n_ctx=n_ctx, n_threads=n_threads,
                               parallel=parallel, decline_bias=decline_bias)
    if backend == "transformers":
        return TransformersBackend(spec, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    if backend == "openai":  # a running OpenAI-compatible server; URL, model, key from TINYLLM_OPENAI_* env
        from tinyllm_utils.backends.server import OpenAICompatBackend

        return OpenAICompatBackend(spec, max_new_tokens=max_new_tokens, seed=seed)
    raise ValueError(f"unknown backend {backend!r}; expected 'llama_cpp', 'transformers' or 'openai'")
