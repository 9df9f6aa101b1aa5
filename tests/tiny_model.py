"""A tiny random-initialised Gemma 3 (gemma3_text) with the real gemma-3-270m tokenizer, for fast tests.

    from tests.tiny_model import build_tiny_model
    folder = build_tiny_model(tmp_path / "tiny")          # config.json, model.safetensors, tokenizer files
    model = AutoModelForCausalLM.from_pretrained(folder)  # Gemma3ForCausalLM, 2 layers, hidden 64, 262k vocab

The architecture is the real one (tied embeddings, sliding + full attention layers, query_pre_attn_scalar,
RMSNorm with +1 weights), only smaller, so training, LoRA, merging and GGUF export exercise the same code
paths as on gemma-3-270m in seconds. The tokenizer is the embedded model's own: taken from the de-quantized
copy's folder when one exists (the study's cache or the user's default cache), else converted once from the
embedded GGUF (slow: a few minutes on 2 busy cores) and kept in the cache.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=32, query_pre_attn_scalar=32, max_position_embeddings=4096, sliding_window=64,
    layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
)


def _tokenizer_folders() -> list[Path]:
    from tinyllm_utils.models.registry import CACHE_DIR

    default = Path.home() / ".cache" / "tinyllm_utils"
    roots = [CACHE_DIR] + ([default] if default != CACHE_DIR else [])
    return [root / "models" / "gemma-3-270m" / sub for root in roots for sub in ("hf", "tokenizer")]


@cache
def gemma_tokenizer():
    """The real gemma-3-270m tokenizer (262,144 tokens), loaded once per process."""
    from transformers import AutoTokenizer

    for folder in _tokenizer_folders():
        if (folder / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(str(folder))
    from tinyllm_utils.models.registry import CACHE_DIR, resolve_model

    gguf = resolve_model("gemma-3-270m").gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target = CACHE_DIR / "models" / "gemma-3-270m" / "tokenizer"
    partial = target.with_name(f"tokenizer.partial-{os.getpid()}")
    tokenizer.save_pretrained(str(partial))
    try:
        partial.rename(target)  # atomic; a concurrent builder that won the race is as good
    except OSError:
        pass
    return tokenizer


def tiny_config(tokenizer, **overrides):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            **{**TINY_CONFIG, **overrides})


def build_tiny_model(folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a seeded tiny Gemma3ForCausalLM and the gemma-3-270m tokenizer into `folder`; returns it."""
    import torch
    from transformers import Gemma3ForCausalLM

    folder = Path(folder)
    tokenizer = gemma_tokenizer()
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_config(tokenizer, **overrides))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
