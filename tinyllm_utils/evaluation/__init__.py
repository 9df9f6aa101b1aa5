"""The one evaluation core every compared model goes through: the same seeded entries, prompts, decoding and
backend, raw output saved entry by entry, scored by bfcl's checkers; multi-turn entries driven turn by turn.
"""
