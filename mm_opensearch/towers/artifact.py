"""The model artifact on disk (``config.json`` + ``model.safetensors``) and its content-hash id.

The model id is what an index records in its ``_meta``: a query tower may only search vectors made
by the product tower of the same id. It hashes everything that decides a vector — the config
without provenance, the backbone ids (which hash the backbones' own weights and preprocessing) and
every tensor of the heads — and nothing that does not (training provenance, library versions), so
it is the same after save/load, in another process, on another machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mm_opensearch.errors import ModelError
from mm_opensearch.towers.backbone_base import state_digest
from mm_opensearch.towers.config import ModelConfig

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "compute_model_id",
    "write_artifact",
    "read_artifact",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_VOLATILE_CONFIG_FIELDS = {"provenance", "hybrid"}  # neither changes a vector
# Options added after models were shipped: left out of the id while at their default, so a model
# trained before them keeps its id (and the indices that record it stay searchable).
_LATER_OPTIONS = {
    "text_backbone": {"trainable_layers": 0},
    "query_backbone": {"trainable_layers": 0},
    "image_backbone": {"colour_descriptor": False, "stage_statistics": False},
}
_VERSIONED_PACKAGES = ("mm-opensearch", "torch", "transformers", "safetensors", "numpy", "pillow")


def compute_model_id(
    config: ModelConfig, backbone_ids: dict[str, str | None], state: dict[str, torch.Tensor]
) -> str:
    """``mmos-<16 hex>``: sha256 of the canonical config (minus provenance), backbone ids, weights."""
    dumped = config.model_dump(mode="json", exclude=_VOLATILE_CONFIG_FIELDS)
    for section, defaults in _LATER_OPTIONS.items():
        spec = dumped.get(section)
        for name, default in defaults.items():
            if isinstance(spec, dict) and spec.get(name, default) == default:
                spec.pop(name, None)
    canonical = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "config": dumped,
            "backbones": backbone_ids,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode())
    digest.update(state_digest(state).encode())
    return f"mmos-{digest.hexdigest()[:16]}"


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file and rename, so a crash never leaves half an artifact file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_artifact(
    folder: Path,
    *,
    config: ModelConfig,
    model_id: str,
    backbones: dict[str, dict[str, Any] | None],
    state: dict[str, torch.Tensor],
) -> None:
    """Write ``config.json`` (config, backbones, versions, id) and ``model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "dim": config.dim,
        "fusion": config.fusion,
        "query_tower": "shared" if config.query_backbone is None else "separate",
        "backbones": backbones,
        "config": config.model_dump(mode="json"),
        "library_versions": _library_versions(),
    }
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"model_id": model_id}))
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_artifact(folder: Path) -> tuple[ModelConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """(config, the whole config.json document, weights) of an artifact folder."""
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        msg = (
            f"model folder {folder} needs {CONFIG_FILE} and {WEIGHTS_FILE}; pass a folder written by "
            "MultimodalModel.save (or `mm-opensearch train`)"
        )
        raise ModelError(msg)
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
        version = document.get("format_version")
        if version != FORMAT_VERSION:
            msg = (
                f"{config_path} has format_version {version!r}; this mm-opensearch reads "
                f"{FORMAT_VERSION}: upgrade mm-opensearch or re-train the model"
            )
            raise ModelError(msg)
        config = ModelConfig.model_validate(document["config"])
        state = load_file(weights_path)
    except (OSError, ValueError, KeyError, ValidationError, SafetensorError) as e:
        msg = f"model folder {folder} is unreadable ({type(e).__name__}: {e}); re-save or re-train it"
        raise ModelError(msg) from e
    return config, document, state
