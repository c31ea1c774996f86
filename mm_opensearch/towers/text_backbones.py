"""Text backbones: any local Hugging Face folder (MiniLM ships as one) and a tiny hashing encoder.

A local folder can be a sentence-transformers model (its ``modules.json`` says how to pool and
whether to normalise, so features equal ``SentenceTransformer.encode``), a CLIP or SigLIP
checkpoint (its text tower with projection), or a plain encoder (mean pooling). Nothing here
touches the network: every ``from_pretrained`` call is ``local_files_only``.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm_opensearch.errors import ModelError
from mm_opensearch.towers.backbone_base import ArtifactWeights, TextBackbone, backbone_id, files_digest, state_digest

__all__ = ["HFTextBackbone", "PooledTextEncoder", "TinyTextBackbone"]

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".json", ".txt", ".model"}
_DUAL_ENCODERS = {"clip": "clip", "siglip": "siglip", "siglip2": "siglip"}


@dataclass(frozen=True)
class _TextLayout:
    """How to run a folder: its architecture family, pooling, and output size."""

    kind: str  # "sentence-transformers" | "encoder" | "clip" | "siglip"
    transformer_dir: Path
    pooling: str  # "mean" | "cls" (ignored by clip/siglip, which have their own heads)
    normalize: bool
    dim: int
    max_length: int


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        msg = f"cannot read {path}: {e}; reinstall the model package or re-export the folder"
        raise ModelError(msg) from e


def _inspect_folder(folder: Path) -> _TextLayout:
    """Read only the small JSON configs: the dimension is needed before any weights are loaded."""
    if not (folder / "config.json").is_file():
        msg = (
            f"text backbone folder {folder} has no config.json; pass 'minilm', 'tiny-text' or a "
            "local Hugging Face model folder (sentence-transformers, CLIP or SigLIP)"
        )
        raise ModelError(msg)
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        by_type = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
        transformer_dir = folder / by_type.get("Transformer", {"path": ""})["path"]
        pooling_dir = folder / by_type.get("Pooling", {"path": "1_Pooling"})["path"]
        pooling = _read_json(pooling_dir / "config.json")
        max_length = _read_json(folder / "sentence_bert_config.json").get("max_seq_length", 256)
        return _TextLayout(
            kind="sentence-transformers",
            transformer_dir=transformer_dir,
            pooling="cls" if pooling.get("pooling_mode_cls_token") else "mean",
            normalize="Normalize" in by_type,
            dim=int(pooling["word_embedding_dimension"]),
            max_length=int(max_length),
        )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    kind = _DUAL_ENCODERS.get(config.model_type, "encoder")
    if kind == "clip":
        dim, max_positions = config.projection_dim, config.text_config.max_position_embeddings
    elif kind == "siglip":
        dim, max_positions = config.text_config.hidden_size, config.text_config.max_position_embeddings
    else:
        dim, max_positions = config.hidden_size, min(512, config.max_position_embeddings)
    return _TextLayout(kind, folder, "mean", kind == "encoder", int(dim), int(max_positions))


class HFTextBackbone(TextBackbone):
    """A text encoder from a local Hugging Face folder; ``minilm`` is the packaged all-MiniLM-L6-v2."""

    def __init__(self, folder: Path, *, name: str, max_length: int | None = None) -> None:
        super().__init__()
        self.folder = folder
        self.name = name
        self._layout = _inspect_folder(folder)
        self.dim = self._layout.dim
        self.max_length = max_length or self._layout.max_length
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()
        self._id: str | None = None

    @property
    def backbone_id(self) -> str:
        if self._id is None:
            files = [
                p
                for p in self.folder.rglob("*")
                if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and "README" not in p.name
            ]
            self._id = backbone_id(
                self.name,
                {"files": files_digest(files), "max_length": self.max_length, "kind": self._layout.kind},
            )
        return self._id

    def _load_module(self) -> nn.Module:
        import transformers

        source = self._layout.transformer_dir
        # transformers 5 draws a "Loading weights" bar on stderr for every load: noise in a CLI's
        # output and in worker logs, for a load that takes a fraction of a second.
        bar = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
            if self._layout.kind == "clip":
                model = transformers.CLIPTextModelWithProjection.from_pretrained(source, local_files_only=True)
            elif self._layout.kind == "siglip":
                model = transformers.SiglipTextModel.from_pretrained(source, local_files_only=True)
            else:
                model = transformers.AutoModel.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            msg = f"cannot load text backbone '{self.name}' from {source}: {e}"
            raise ModelError(msg) from e
        finally:
            if bar:
                transformers.utils.logging.enable_progress_bar()
        return PooledTextEncoder(model, self._layout)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) on the CPU, padded to the longest text (SigLIP: to max_length)."""
        self.module()  # the tokenizer is loaded with the weights
        with self._tokenizer_lock:  # fast tokenizers raise "Already borrowed" when shared by threads
            tokens = self._tokenizer(
                list(texts),
                padding="max_length" if self._layout.kind == "siglip" else True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        ids = tokens["input_ids"]
        return ids, tokens.get("attention_mask", torch.ones_like(ids))

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        with self._inference():
            pooled = self.module()(ids.to(self.device), mask.to(self.device))
        return pooled.float().cpu()


class PooledTextEncoder(nn.Module):
    """A transformer plus its folder's pooling: (input_ids, attention_mask) in, one vector per text out.

    Both runtimes run exactly this module: PyTorch directly and ONNX Runtime as its export, so
    the pooling is written once.
    """

    def __init__(self, model: nn.Module, layout: _TextLayout) -> None:
        super().__init__()
        self.model = model
        self.kind, self.pooling, self.normalize = layout.kind, layout.pooling, layout.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.kind == "clip":
            pooled = output.text_embeds
        elif self.kind == "siglip":
            pooled = output.pooler_output
        elif self.pooling == "cls":
            pooled = output.last_hidden_state[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
            summed = (output.last_hidden_state * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
        pooled = pooled.float()
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class TinyTextBackbone(ArtifactWeights, TextBackbone):
    """Random-init hashing bag-of-words (32-d): deterministic from its seed, for fast tests."""

    name = "tiny-text"
    dim = 32
    max_length = 64
    _BUCKETS = 2048
    _WORD = re.compile(r"\w+")

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self._module = self._load_module()
        self._id: str | None = None

    def _load_module(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.EmbeddingBag(self._BUCKETS, self.dim, mode="mean").eval()

    @property
    def backbone_id(self) -> str:
        if self._id is None:
            self._id = backbone_id(self.name, {"state": state_digest(self.module().state_dict())})
        return self._id

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        ids: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            words = self._WORD.findall(text.lower())[: self.max_length]
            ids.extend(zlib.crc32(word.encode()) % self._BUCKETS for word in words)
        with self._inference():
            out = self.module()(
                torch.tensor(ids, dtype=torch.long, device=self.device),
                torch.tensor(offsets, dtype=torch.long, device=self.device),
            )
        return out.float().cpu()
