"""The embedded GGUF model as a Hugging Face checkpoint: de-quantized once and cached as safetensors, for the
transformers backend and for training.
"""

from __future__ import annotations

from pathlib import Path

from tinyllm_utils.models.registry import CACHE_DIR, ModelSpec


def embedded_hf_copy(spec: ModelSpec) -> Path:
    """A safetensors copy of an embedded GGUF model, made once (de-quantizing the GGUF is slow)."""
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
