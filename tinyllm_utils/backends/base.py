"""What every backend shares: the `Generation` record, the end-of-turn marker, the tokenizer a chat-template
model's prompts need, and the refusal of grammars where only llama.cpp can apply them.

Backends (this subpackage) share one interface and the same decoding rules (greedy, a cap on new tokens, stop at
end of turn), so their predictions are comparable:

* `LlamaCppBackend` runs a GGUF with llama.cpp (llama-cpp-python): the fast path on a CPU.
* `TransformersBackend` runs a Hugging Face checkpoint (or the embedded GGUF, de-quantized once and cached
  as safetensors), batched with left padding and the KV cache.

`generate(prompts)` takes text without BOS (see prompts.format_prompt) and returns one `Generation` each.
With `stop_when_hopeless=True` a generation also stops as soon as its text can no longer decode as a Python
call list (decoding.cannot_become_calls): the score is then already decided, and a base model that would
otherwise write prose up to the token cap costs a few tokens instead of hundreds. With `grammars` (one GBNF
text or None per prompt, tinyllm_utils.bfcl.grammar) llama.cpp samples only text the grammar allows; the other
backends refuse them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tinyllm_utils.models.registry import ModelSpec, ModelUnavailableError

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


def refuse_grammars(backend: str, grammars) -> None:
    if grammars and any(grammars):
        raise ValueError(f"grammar-constrained decoding runs on the llama_cpp backend only, not {backend}")


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
