"""Everything BFCL: the one shim over bfcl-eval, its categories and entries, decoding model output into calls
(literals only, never evaluated), scoring with bfcl's own checkers, aggregation into BFCL's composites, and the
call-list grammar for constrained decoding.
"""
