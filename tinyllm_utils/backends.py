"""Inference backends behind one interface: same prompts, same decoding rules (greedy, a cap on new tokens,
stop at end of turn), so their predictions are comparable.

* `LlamaCppBackend` runs a GGUF with llama.cpp (llama-cpp-python): the fast path on a CPU.
* `TransformersBackend` runs a Hugging Face checkpoint (or the embedded GGUF, de-quantized once and cached
  as safetensors), batched with left padding and the KV cache.

`generate(prompts)` takes text without BOS (see prompts.format_prompt) and returns one `Generation` each.
With `stop_when_hopeless=True` a generation also stops as soon as its text can no longer decode as a Python
call list (decoding.cannot_become_calls): the score is then already decided, and a base model that would
otherwise write prose up to the token cap costs a few tokens instead of hundreds. With `grammars` (one GBNF
text or None per prompt, tinyllm_utils.grammar) llama.cpp samples only text the grammar allows; the other
backends refuse them.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tinyllm_utils.decoding import cannot_become_calls
from tinyllm_utils.registry import CACHE_DIR, ModelSpec, ModelUnavailableError

END_OF_TURN = "<end_of_turn>"


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    stopped_early: bool = False  # cut by stop_when_hopeless, not by end of turn or the token cap
    error: str | None = None  # e.g. "inference:prompt_too_long"; the text is then empty

    def to_dict(self) -> dict:
        return asdict(self)


def make_backend(spec: ModelSpec, backend: str = "llama_cpp", max_new_tokens: int = 256, seed: int = 0,
                 batch_size: int = 8, n_ctx: int = 32768, n_threads: int | None = None):
    if backend == "llama_cpp":
        return LlamaCppBackend(spec, max_new_tokens=max_new_tokens, seed=seed, n_ctx=n_ctx, n_threads=n_threads)
    if backend == "transformers":
        return TransformersBackend(spec, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    if backend == "openai":  # a running OpenAI-compatible server; URL, model, key from TINYLLM_OPENAI_* env
        from tinyllm_utils.server_backend import OpenAICompatBackend

        return OpenAICompatBackend(spec, max_new_tokens=max_new_tokens, seed=seed)
    raise ValueError(f"unknown backend {backend!r}; expected 'llama_cpp', 'transformers' or 'openai'")


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


def refuse_grammars(backend: str, grammars) -> None:
    if grammars and any(grammars):
        raise ValueError(f"grammar-constrained decoding runs on the llama_cpp backend only, not {backend}")


def _embedded_hf_copy(spec: ModelSpec) -> Path:
    """A safetensors copy of an embedded GGUF model, made once (de-quantizing the GGUF takes ~40-60 s)."""
    target = CACHE_DIR / "models" / spec.name / "hf"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader leaves its quantizer attached and save_pretrained refuses; the weights are plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name("hf.partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a crash never leaves a half-written cache that looks finished
    return target


# Plain greedy decoding, as llama.cpp and the server backends run it: a checkpoint's generation_config may ask
# for more (Qwen: repetition_penalty 1.05); generate()'s own arguments override it.
PLAIN_GREEDY = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
                "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None}


class TransformersBackend:
    name = "transformers"

    def __init__(self, spec: ModelSpec, max_new_tokens: int = 256, seed: int = 0, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec, self.max_new_tokens, self.seed, self.batch_size = spec, max_new_tokens, seed, batch_size
        if spec.source == "embedded":
            self.source = str(_embedded_hf_copy(spec))
        else:
            self.source = spec.path or spec.hf_id
        torch.manual_seed(seed)
        try:
            # a hub model is loaded at its pinned commit (registry `revision`), so "the same model" stays the same
            revision = spec.revision if spec.source == "hub" else None
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, revision=revision)
            self.model = AutoModelForCausalLM.from_pretrained(self.source, dtype="auto", revision=revision)
        except OSError as exc:
            raise ModelUnavailableError(
                f"cannot load {spec.name!r} from {self.source!r}: it is not in the local Hugging Face cache and "
                f"the hub is unreachable or the id is wrong ({str(exc).splitlines()[0]}). On a machine with the "
                "hub, run once with network access; offline, pass a local checkpoint folder."
            ) from None
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        stop_ids = {self.tokenizer.eos_token_id}
        end_of_turn = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if isinstance(end_of_turn, int) and end_of_turn != self.tokenizer.unk_token_id:
            stop_ids.add(end_of_turn)
        configured = self.model.generation_config.eos_token_id
        stop_ids.update(configured if isinstance(configured, list) else [configured])
        self.stop_ids = sorted(i for i in stop_ids if i is not None)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True).input_ids

    def generate(self, prompts: list[str], stop_when_hopeless: bool = False,
                 grammars: list[str | None] | None = None) -> list[Generation]:
        refuse_grammars(self.name, grammars)
        results: list[Generation | None] = [None] * len(prompts)
        # Batch prompts of similar length together so left padding wastes little compute.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, generation in zip(batch, self._generate_batch([prompts[i] for i in batch], stop_when_hopeless)):
                results[i] = generation
        return results

    def _generate_batch(self, prompts: list[str], stop_when_hopeless: bool = False) -> list[Generation]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer = self.tokenizer

        class StopIfHopeless(StoppingCriteria):
            def __init__(self, prompt_width: int):
                self.prompt_width, self.stopped = prompt_width, None

            def __call__(self, input_ids, scores, **kwargs):
                if self.stopped is None:
                    self.stopped = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for row in range(input_ids.shape[0]):
                    if not self.stopped[row]:
                        text = tokenizer.decode(input_ids[row, self.prompt_width:], skip_special_tokens=True)
                        self.stopped[row] = cannot_become_calls(text)
                return self.stopped.clone()

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        prompt_lengths = encoded.attention_mask.sum(dim=1).tolist()
        if self.max_positions and encoded.input_ids.shape[1] + self.max_new_tokens > self.max_positions:
            if len(prompts) > 1:  # retry one by one so only the too-long prompt is refused
                return [g for p in prompts for g in self._generate_batch([p])]
            return [Generation("", prompt_lengths[0], 0, 0.0, error="inference:prompt_too_long")]
        stopper = StopIfHopeless(encoded.input_ids.shape[1])
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **encoded, max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id, **PLAIN_GREEDY,
                stopping_criteria=StoppingCriteriaList([stopper]) if stop_when_hopeless else None,
            )
        seconds = (time.perf_counter() - start) / len(prompts)
        generations = []
        stopped = stopper.stopped.tolist() if stopper.stopped is not None else [False] * len(prompts)
        for row, prompt_length, early in zip(output[:, encoded.input_ids.shape[1]:].tolist(), prompt_lengths, stopped):
            new_tokens = []
            for token in row:
                if token in self.stop_ids:
                    break
                new_tokens.append(token)
            text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
            generations.append(Generation(text, prompt_length, len(new_tokens), seconds, stopped_early=bool(early)))
        return generations

    def describe(self) -> dict:
        import torch
        import transformers

        return {"backend": self.name, "transformers": transformers.__version__, "torch": torch.__version__,
                "source": self.source, "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "torch_threads": torch.get_num_threads()}


def prompt_tokenizer(spec: ModelSpec):
    """The tokenizer `format_prompt` needs for `chat_template` models (gemma-format models need none)."""
    if spec.prompt_format != "chat_template":
        return None
    from transformers import AutoTokenizer

    source = spec.path or spec.hf_id
    try:
        return AutoTokenizer.from_pretrained(source, revision=spec.revision if spec.source == "hub" else None)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot load the tokenizer of {spec.name!r} from {source!r} to format its "
                                    f"prompts ({str(exc).splitlines()[0]})") from None
