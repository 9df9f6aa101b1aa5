"""Inference backends behind one interface (`generate(prompts)` -> `Generation`s): llama.cpp for GGUF files,
transformers for Hugging Face checkpoints, and an OpenAI-compatible server; `factory.make_backend` picks one.
They share the decoding rules (greedy, a token cap, stop at end of turn), so their predictions are comparable.
"""
