"""The llama.cpp backend (llama-cpp-python): a GGUF file on the CPU, optionally under a GBNF grammar.
"""

from __future__ import annotations

import os
import time

from tinyllm_utils.backends.base import END_OF_TURN, Generation
from tinyllm_utils.bfcl.decoding import cannot_become_calls
from tinyllm_utils.models.registry import ModelSpec


class LlamaCppBackend:
    name = "llama_cpp"

    def __init__(self, spec: ModelSpec, max_new_tokens: int = 256, seed: int = 0, n_ctx: int = 32768,
                 n_threads: int | None = None):
        from llama_cpp import Llama

        self.spec, self.max_new_tokens, self.seed = spec, max_new_tokens, seed
        self.model_path = spec.gguf_path()
        self.llm = Llama(model_path=str(self.model_path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                         seed=seed, verbose=False)
        self.n_ctx = self.llm.n_ctx()
        self.tokenizer = None  # llama.cpp prompts use the "gemma" format or a registry GGUF; no HF template

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def generate(self, prompts: list[str], stop_when_hopeless: bool = False,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        grammars = grammars or [None] * len(prompts)
        return [self._generate_one(p, stop_when_hopeless, g) for p, g in zip(prompts, grammars, strict=True)]

    def _generate_one(self, prompt: str, stop_when_hopeless: bool, grammar: str | None = None) -> Generation:
        from llama_cpp import LlamaGrammar, StoppingCriteriaList

        tokens = self.tokenize(prompt)
        if len(tokens) + self.max_new_tokens > self.n_ctx:
            return Generation("", len(tokens), 0, 0.0, error="inference:prompt_too_long")
        hopeless = []

        def stop_if_hopeless(input_ids, _logits) -> bool:
            text = self.llm.detokenize(list(input_ids[len(tokens):])).decode("utf-8", errors="ignore")
            if cannot_become_calls(text):
                hopeless.append(True)
            return bool(hopeless)

        start = time.perf_counter()
        out = self.llm.create_completion(
            prompt=tokens, max_tokens=self.max_new_tokens, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
            repeat_penalty=1.0, stop=[END_OF_TURN], seed=self.seed,
            stopping_criteria=StoppingCriteriaList([stop_if_hopeless]) if stop_when_hopeless else None,
            grammar=LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
        )
        usage = out["usage"]
        return Generation(out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"],
                          time.perf_counter() - start, stopped_early=bool(hopeless))

    def describe(self) -> dict:
        import llama_cpp

        return {"backend": self.name, "llama_cpp_python": llama_cpp.__version__, "model_file": str(self.model_path),
                "n_ctx": self.n_ctx, "n_threads": self.llm.n_threads, "max_new_tokens": self.max_new_tokens}
