"""How much of a fine-tune survives quantization: the "snap-back" of a re-quantized fine-tuned model onto its base's
own quantized values.

    .venv/bin/python -m tinyllm_utils.edge.snapback --base-quant BASE-Q4_K_M.gguf --finetuned FT-F16.gguf \\
        --quant FT-Q4_K_M.gguf [--base BASE-F16.gguf] [--out report.json] [--top 10]

The offline base is the embedded Q4_K_M de-quantized (models/embedded.py), so its weights lie exactly on that
file's quantization grid. A fine-tune moves them by a delta D = W_ft - W_base; quantizing W_ft with the same
recipe rounds each weight to the nearest grid point again, and where |D| is under half a step (and the block's
scale does not move) it lands back on the base's own value: the fine-tune is undone there. Per tensor and over
the model this reports

* `identical_bytes` / `identical_blocks`: the share of Q(W_ft)'s bytes (quantized blocks) equal to Q(W_base)'s,
  for tensors of the same type in both (others are counted apart, `same_type` false);
* `delta_rel` = ||D|| / ||W_base||, and D in units of the quantization step of Q(W_base)'s blocks (its scale, or
  the sub-block scale of K-quants): the RMS of D / step and the share of weights with |D| >= step / 2;
* `survival` = ||Q(W_ft) - Q(W_base)|| / ||D||, both quantized tensors de-quantized with gguf.quants.dequantize,
  and `kept` = <Q(W_ft) - Q(W_base), D> / ||D||^2, the share of the delta's own direction that the quantized
  change carries (1: kept whole; 0: snapped back; `survival` alone also counts rounding noise as survival);
* `changed_weights`: the share of weights whose de-quantized value differs between Q(W_ft) and Q(W_base).

`--base` is W_base (default: `--base-quant` de-quantized, exact for the embedded Q4_K_M base, which is the model
the study trains from). Tensors are compared by GGUF name, in row chunks (the 262k-row embedding de-quantized at
once would take GBs); tensors stored as F32/F16 in both quantized files (norms) are left out. numpy and gguf only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CHUNK_WEIGHTS = 1 << 22  # weights per row chunk: bounds memory to tens of MB per array


def block_steps(blocks: np.ndarray, qtype) -> np.ndarray:
    """The quantization step of every weight of quantized `blocks` (uint8, (n_blocks, type_size)): the spacing of
    the grid the block's values lie on. Q4_0 / Q5_0 / Q8_0: the block scale d; Q4_K / Q5_K: d * the sub-block's
    6-bit scale (32 weights); Q6_K: d * the group's 8-bit scale (16 weights). Shape (n_blocks, block_size)."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import Q4_K

    n = blocks.shape[0]
    if qtype in (T.Q4_0, T.Q5_0, T.Q8_0):
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        return np.repeat(np.abs(d), 32, axis=1)
    if qtype in (T.Q4_K, T.Q5_K):
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        scales, _ = Q4_K.get_scale_min(blocks[:, 4:16].copy())
        return np.repeat(np.abs(d * scales.astype(np.float32)), 32, axis=1)
    if qtype == T.Q6_K:
        scales = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
        d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)
        return np.repeat(np.abs(d * scales), 16, axis=1)
    raise NotImplementedError(f"no step for {getattr(qtype, 'name', qtype)}")


def _rows(tensor) -> np.ndarray:
    """A reader tensor's data as rows: (rows, bytes per row) for quantized types, (rows, columns) for floats."""
    data = tensor.data
    return data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(1, -1)


def _dequantize(rows: np.ndarray, qtype) -> np.ndarray:
    from gguf.quants import dequantize

    return dequantize(np.ascontiguousarray(rows), qtype).astype(np.float32).reshape(rows.shape[0], -1)


def compare_tensor(base_quant, finetuned, quant, base=None) -> dict:
    """The snap-back figures of one tensor (gguf ReaderTensors of the same name), with the sums the model-wide
    figures are made of (`_sums`)."""
    from gguf import GGMLQuantizationType as T
    from gguf.constants import GGML_QUANT_SIZES

    base = base if base is not None else base_quant
    qb, qf = base_quant.tensor_type, quant.tensor_type
    same_type = qb == qf
    r_bq, r_q, r_ft, r_b = _rows(base_quant), _rows(quant), _rows(finetuned), _rows(base)
    n_rows = r_ft.shape[0]
    if not (r_bq.shape[0] == r_q.shape[0] == r_b.shape[0] == n_rows):
        raise ValueError(f"{finetuned.name}: row counts differ")
    step_ok = same_type and qb in (T.Q4_0, T.Q5_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K)
    s = dict(n=0, d2=0.0, w2=0.0, q2=0.0, qd=0.0, changed=0, bytes=0, same_bytes=0, blocks=0, same_blocks=0,
             steps2=0.0, over_half=0, stepped=0)
    chunk = max(1, CHUNK_WEIGHTS // max(1, r_ft.shape[1]))
    for start in range(0, n_rows, chunk):
        sl = slice(start, min(n_rows, start + chunk))
        w_ft = r_ft[sl].astype(np.float32)
        floats = base.tensor_type in (T.F32, T.F16)
        w_b = r_b[sl].astype(np.float32) if floats else _dequantize(r_b[sl], base.tensor_type)
        q_b, q_f = _dequantize(r_bq[sl], qb), _dequantize(r_q[sl], qf)
        delta, moved = w_ft - w_b, q_f - q_b
        s["n"] += delta.size
        s["d2"] += float((delta.astype(np.float64) ** 2).sum())
        s["w2"] += float((w_b.astype(np.float64) ** 2).sum())
        s["q2"] += float((moved.astype(np.float64) ** 2).sum())
        s["qd"] += float((moved.astype(np.float64) * delta).sum())
        s["changed"] += int((moved != 0).sum())
        if same_type:
            a, b = np.ascontiguousarray(r_bq[sl]), np.ascontiguousarray(r_q[sl])
            s["bytes"] += a.size
            s["same_bytes"] += int((a == b).sum())
            size = GGML_QUANT_SIZES[qb][1]
            blocks_a, blocks_b = a.reshape(-1, size), b.reshape(-1, size)
            s["blocks"] += blocks_a.shape[0]
            s["same_blocks"] += int((blocks_a == blocks_b).all(axis=1).sum())
            if step_ok:
                step = block_steps(blocks_a, qb).reshape(delta.shape)
                ok = step > 0
                ratio = np.abs(delta[ok]) / step[ok]
                s["stepped"] += int(ok.sum())
                s["steps2"] += float((ratio.astype(np.float64) ** 2).sum())
                s["over_half"] += int((ratio >= 0.5).sum())
    return {"name": finetuned.name, "base_type": qb.name, "type": qf.name, "same_type": same_type, **_figures(s),
            "_sums": s}


def _figures(s: dict) -> dict:
    def share(a, b):
        return round(a / b, 6) if b else None

    d = s["d2"] ** 0.5
    return {"weights": s["n"], "identical_bytes": share(s["same_bytes"], s["bytes"]),
            "identical_blocks": share(s["same_blocks"], s["blocks"]),
            "delta_rel": share(d, s["w2"] ** 0.5),
            "delta_steps_rms": round((s["steps2"] / s["stepped"]) ** 0.5, 6) if s["stepped"] else None,
            "over_half_step": share(s["over_half"], s["stepped"]),
            "survival": share(s["q2"] ** 0.5, d), "kept": share(s["qd"], s["d2"]),
            "changed_weights": share(s["changed"], s["n"])}


def snapback_report(base_quant: str | Path, finetuned: str | Path, quant: str | Path,
                    base: str | Path | None = None) -> dict:
    """Per-tensor and model-wide snap-back figures (module docstring) of `quant` = Q(`finetuned`) against
    `base_quant` = Q(W_base). Tensors missing from any file, or unquantized in both quantized files, are left out
    (listed in `left_out`)."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    readers = {k: GGUFReader(str(p)) for k, p in
               (("base_quant", base_quant), ("finetuned", finetuned), ("quant", quant), ("base", base)) if p}
    tensors = {k: {t.name: t for t in r.tensors} for k, r in readers.items()}
    rows, left_out = [], []
    for name, ft in tensors["finetuned"].items():
        others = [tensors[k].get(name) for k in ("base_quant", "quant")]
        ref = tensors["base"].get(name) if "base" in tensors else others[0]
        if any(t is None for t in [*others, ref]):
            left_out.append(name)
            continue
        if others[0].tensor_type in (T.F32, T.F16) and others[1].tensor_type in (T.F32, T.F16):
            left_out.append(name)
            continue
        rows.append(compare_tensor(others[0], ft, others[1], ref))
    total = {k: sum(r["_sums"][k] for r in rows) for k in rows[0]["_sums"]} if rows else {}
    by_type: dict[str, dict] = {}
    for r in rows:
        sums = by_type.setdefault(r["type"] if r["same_type"] else f"{r['base_type']}->{r['type']}", {})
        for k, v in r["_sums"].items():
            sums[k] = sums.get(k, 0) + v
    for r in rows:
        del r["_sums"]
    return {"files": {k: str(p) for k, p in (("base_quant", base_quant), ("finetuned", finetuned),
                                             ("quant", quant), ("base", base)) if p},
            "overall": _figures(total) if total else {}, "by_type": {k: _figures(v) for k, v in by_type.items()},
            "tensors": rows, "left_out": left_out}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-quant", required=True, help="Q(W_base): the base model quantized")
    parser.add_argument("--finetuned", required=True, help="W_ft: the fine-tuned model's F16 (or F32) GGUF")
    parser.add_argument("--quant", required=True, help="Q(W_ft): the fine-tuned model quantized")
    parser.add_argument("--base", help="W_base, when not --base-quant itself (e.g. the base's F16)")
    parser.add_argument("--out", type=Path, help="write the whole report (every tensor) as JSON here")
    parser.add_argument("--top", type=int, default=10, help="print the N tensors whose bytes differ most")
    args = parser.parse_args(argv)
    report = snapback_report(args.base_quant, args.finetuned, args.quant, args.base)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({"overall": report["overall"], "by_type": report["by_type"]}, indent=1))
    same = [r for r in report["tensors"] if r["identical_bytes"] is not None]
    for r in sorted(same, key=lambda r: r["identical_bytes"])[: args.top]:
        print(f"{r['name']:28s} {r['type']:6s} bytes {r['identical_bytes']:.3f} blocks {r['identical_blocks']:.3f} "
              f"delta {r['delta_rel']:.4f} ({r['delta_steps_rms']} steps rms) survival {r['survival']} "
              f"kept {r['kept']}")


if __name__ == "__main__":
    main()
