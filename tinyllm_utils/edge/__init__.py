"""The edge profile: quantized variants made with llama.cpp's quantizer, a device profile per variant (size,
load time, peak memory, time to first token, tokens/s), accuracy kept against F16, and the Pareto table.
"""
