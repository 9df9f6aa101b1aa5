"""The llama.cpp backend (llama-cpp-python): a GGUF file on the CPU, optionally under a GBNF grammar.

With `parallel > 1` it decodes up to `parallel` answers in one `llama_decode` call per token (llama.cpp's
multi-sequence batch, through llama-cpp-python's low-level API): one token of every unfinished answer per
step, so the weights are read once per step instead of once per answer, which is most of a small model's
decoding time on a CPU. Each answer has its own KV stream (`kv_unified=False`) holding its own prompt only
(what a stream already holds of it is kept, as the high-level API keeps it), and the same greedy rules apply (argmax, the token cap, stop at end of turn, `stop_when_hopeless`). Answers under
a grammar are decoded one at a time (the grammar sampler is per sequence). Whether batched answers equal
sequential ones depends on the weight type's kernels: `benchmarks/batched_parity.py` measures the flip rate.

With `decline_bias` (a float) the first token of the no-call answer (prompts.NO_CALL_ANSWER) gets that much
added to its logit at the answer's first position, and nowhere else: a call/no-call decision whose threshold is
calibrated on held-out training rows (tinyllm_utils.evaluation.decline), reported as its own decoding option.
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

from tinyllm_utils.backends.base import END_OF_TURN, Generation
from tinyllm_utils.bfcl.decoding import cannot_become_calls
from tinyllm_utils.models.prompts import NO_CALL_ANSWER
from tinyllm_utils.models.registry import ModelSpec

# Tokens per prefill call: the high-level API's default, so a prompt is prefilled in the same chunks either way.
PREFILL_CHUNK = 512


class LlamaCppBackend:
    name = "llama_cpp"

    def __init__(self, spec: ModelSpec, max_new_tokens: int = 256, seed: int = 0, n_ctx: int = 32768,
                 n_threads: int | None = None, parallel: int = 1, parallel_ctx: int = 8192,
                 decline_bias: float | None = None):
        from llama_cpp import Llama

        self.spec, self.max_new_tokens, self.seed = spec, max_new_tokens, seed
        self.parallel, self.parallel_ctx = max(1, parallel), parallel_ctx
        self.decline_bias = decline_bias
        self.model_path = spec.gguf_path()
        # spec.lora_path: a GGUF LoRA adapter applied at run time on these weights (the adapter kept in F16 over a
        # quantized base: tinyllm_utils.edge.lora_adapter)
        self.llm = Llama(model_path=str(self.model_path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                         seed=seed, verbose=False, lora_path=str(spec.lora_path) if spec.lora_path else None)
        self.n_ctx = self.llm.n_ctx()
        self.tokenizer = None  # llama.cpp prompts use the "gemma" format or a registry GGUF; no HF template
        self._batched = None  # the multi-sequence context, made on first use
        self._in_stream: dict[int, list[int]] = {}  # the tokens whose keys and values each stream holds

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def decline_token(self, prompt: str) -> int:
        """The first token of the no-call answer where it follows this prompt (tokenized together, as trained)."""
        return self.tokenize(prompt + NO_CALL_ANSWER)[len(self.tokenize(prompt))]

    def generate(self, prompts: list[str], stop_when_hopeless: bool = False,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        grammars = grammars or [None] * len(prompts)
        if self.parallel == 1 or any(grammars):
            return [self._generate_one(p, stop_when_hopeless, g) for p, g in zip(prompts, grammars, strict=True)]
        results = []
        for start in range(0, len(prompts), self.parallel):
            results += self._generate_batch(prompts[start:start + self.parallel], stop_when_hopeless)
        return results

    def _generate_one(self, prompt: str, stop_when_hopeless: bool, grammar: str | None = None) -> Generation:
        from llama_cpp import LlamaGrammar, StoppingCriteriaList

        tokens = self.tokenize(prompt)
        if len(tokens) + self.max_new_tokens > self.n_ctx:
            return Generation("", len(tokens), 0, 0.0, error="inference:prompt_too_long")
        hopeless = []
        processors = None
        if self.decline_bias is not None:
            from llama_cpp import LogitsProcessorList

            decline = self.decline_token(prompt)

            def bias_first_token(input_ids, scores):
                if len(input_ids) == len(tokens):
                    scores[decline] += self.decline_bias
                return scores

            processors = LogitsProcessorList([bias_first_token])

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
            logits_processor=processors,
        )
        usage = out["usage"]
        return Generation(out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"],
                          time.perf_counter() - start, stopped_early=bool(hopeless))

    def _context(self):
        """The multi-sequence context on the already loaded weights: one KV stream of `parallel_ctx` per answer."""
        if self._batched is None:
            from llama_cpp import llama_cpp as ll

            params = ll.llama_context_default_params()
            params.n_ctx = self.parallel_ctx * self.parallel
            params.n_batch = params.n_ubatch = max(PREFILL_CHUNK, self.parallel)
            params.n_seq_max = self.parallel
            params.kv_unified = False
            # llama.cpp's CPU flash attention skips masked cells: an answer's attention sums over its own tokens
            # only, in the same order whatever the other streams' lengths, so a batch-mate cannot change it
            params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
            params.n_threads = params.n_threads_batch = self.llm.n_threads
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):  # llama.cpp's context notes, as Llama(verbose=False) does
                ctx = ll.llama_init_from_model(self.llm._model.model, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not make a {self.parallel}-sequence context")
            if self.llm._lora_adapter is not None:  # the adapter the high-level context applies, here too
                adapters = (ll.llama_adapter_lora_p_ctypes * 1)(self.llm._lora_adapter)
                if ll.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(self.llm.lora_scale)):
                    raise RuntimeError(f"llama.cpp could not apply the LoRA adapter {self.spec.lora_path}")
            self._batched = (ctx, ll.llama_batch_init(max(PREFILL_CHUNK, self.parallel), 0, 1))
        return self._batched

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode call on (token, position, sequence, wants logits) entries."""
        from llama_cpp import llama_cpp as ll

        ctx, batch = self._context()
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        status = ll.llama_decode(ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")

    def _logits(self, index: int) -> np.ndarray:
        from llama_cpp import llama_cpp as ll

        ctx, _ = self._context()
        return np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), shape=(self.llm.n_vocab(),))

    def _next_token(self, index: int, decline: int | None = None) -> int:
        logits = self._logits(index)
        if decline is not None and self.decline_bias is not None:
            logits = logits.copy()
            logits[decline] += self.decline_bias
        return int(np.argmax(logits))  # greedy; the first maximum on a tie, as llama.cpp's greedy sampler

    def _prefill(self, seq: int, tokens: list[int]) -> int:
        """Prompt `tokens` into sequence `seq`'s stream, in the high-level API's chunks; returns the batch index
        of the last prompt token's logits. The part the stream already holds (the system prompt of the previous
        answer, a multi-turn chat's earlier turns) is kept, as llama-cpp-python's high-level API keeps it: a
        token's keys and values depend only on the tokens before it, the same however they were batched."""
        from llama_cpp import llama_cpp as ll

        ctx, _ = self._context()
        held = self._in_stream.get(seq, [])
        common = 0
        while common < min(len(held), len(tokens) - 1) and held[common] == tokens[common]:
            common += 1
        if not ll.llama_memory_seq_rm(ll.llama_get_memory(ctx), seq, common, -1):
            common = 0  # the cache cannot cut this stream here: start it again
            ll.llama_memory_seq_rm(ll.llama_get_memory(ctx), seq, -1, -1)
        for chunk in range(common, len(tokens), PREFILL_CHUNK):
            piece = tokens[chunk:chunk + PREFILL_CHUNK]
            self._decode([(t, chunk + i, seq, chunk + i == len(tokens) - 1) for i, t in enumerate(piece)])
        self._in_stream[seq] = list(tokens)
        return (len(tokens) - 1 - common) % PREFILL_CHUNK

    def decline_margins(self, prompts: list[str]) -> list[float]:
        """Per prompt, at the answer's first position: the highest logit of any other token minus the no-call
        answer's first token's. Greedy declines when this is below `decline_bias`."""
        from llama_cpp import llama_cpp as ll

        ctx, _ = self._context()
        margins = []
        for prompt in prompts:
            tokens = self.tokenize(prompt)
            logits = self._logits(self._prefill(0, tokens)).copy()
            decline = self.decline_token(prompt)
            chosen = logits[decline]
            logits[decline] = -np.inf
            margins.append(float(logits.max() - chosen))
        return margins

    def _generate_batch(self, prompts: list[str], stop_when_hopeless: bool) -> list[Generation]:
        """Greedy answers to up to `parallel` prompts, one decode call per generated token for all of them."""
        from llama_cpp import llama_cpp as ll

        ctx, _ = self._context()
        vocab = self.llm._model.vocab
        start = time.perf_counter()
        prompt_tokens = [self.tokenize(p) for p in prompts]
        results: list[Generation | None] = [None] * len(prompts)
        generated: dict[int, list[int]] = {}
        next_token: dict[int, int] = {}
        for seq, tokens in enumerate(prompt_tokens):
            if len(tokens) + self.max_new_tokens > self.parallel_ctx:  # the batch's streams are this long
                results[seq] = self._generate_one(prompts[seq], stop_when_hopeless)
                continue
            next_token[seq] = self._next_token(self._prefill(seq, tokens), self.decline_token(prompts[seq]))
            generated[seq] = []

        def finish(seq: int, hopeless: bool = False) -> None:
            text = self.llm.detokenize(generated[seq], prev_tokens=prompt_tokens[seq]).decode("utf-8", errors="ignore")
            if END_OF_TURN in text:
                text = text[:text.index(END_OF_TURN)]
            results[seq] = Generation(text, len(prompt_tokens[seq]), len(generated[seq]), 0.0,
                                      stopped_early=hopeless)
            del next_token[seq]

        while next_token:
            step = []
            for seq, token in list(next_token.items()):
                if ll.llama_vocab_is_eog(vocab, token):
                    finish(seq)
                    continue
                generated[seq].append(token)
                text = self.llm.detokenize(generated[seq], prev_tokens=prompt_tokens[seq]).decode(
                    "utf-8", errors="ignore")
                if END_OF_TURN in text or len(generated[seq]) >= self.max_new_tokens:
                    finish(seq)
                elif stop_when_hopeless and cannot_become_calls(text):
                    finish(seq, hopeless=True)
                else:
                    step.append((token, len(prompt_tokens[seq]) + len(generated[seq]) - 1, seq, True))
            if step:
                self._decode(step)
                for index, (token, _, seq, _) in enumerate(step):
                    self._in_stream[seq].append(token)
                    next_token[seq] = self._next_token(index)
        seconds = (time.perf_counter() - start) / len(prompts)  # the batch's time, shared by its answers
        for result in results:
            result.seconds = seconds
        return results

    def close(self) -> None:
        if self._batched is not None:
            from llama_cpp import llama_cpp as ll

            ctx, batch = self._batched
            ll.llama_batch_free(batch)
            ll.llama_free(ctx)
            self._batched, self._in_stream = None, {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass

    def describe(self) -> dict:
        import llama_cpp

        return {"backend": self.name, "llama_cpp_python": llama_cpp.__version__, "model_file": str(self.model_path),
                "lora_adapter": str(self.spec.lora_path) if self.spec.lora_path else None,
                "n_ctx": self.n_ctx, "n_threads": self.llm.n_threads, "max_new_tokens": self.max_new_tokens,
                "parallel": self.parallel, "parallel_ctx": self.parallel_ctx if self.parallel > 1 else None,
                "decline_bias": self.decline_bias}
