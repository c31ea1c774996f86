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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm_opensearch.errors import ModelError
from mm_opensearch.towers.backbone_base import (
    FIXED_ROWS,
    ArtifactWeights,
    TextBackbone,
    backbone_id,
    files_digest,
    state_digest,
)

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

    def __init__(self, folder: Path, *, name: str, max_length: int | None = None, trainable_layers: int = 0) -> None:
        super().__init__()
        self.folder = folder
        self.name = name
        self.trainable_layers = trainable_layers
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
        if not self.trainable_layers:
            return self._id
        # Fine-tuned: the id follows the tuned layers' weights (not memoised: training changes them).
        return backbone_id(self._id, {"trainable_layers": self.trainable_layers,
                                      "tuned": state_digest(self.saved_state())})

    def _tuned_prefixes(self) -> tuple[str, ...]:
        """state_dict prefixes of the top ``trainable_layers`` layers (BERT-style ``encoder.layer``)."""
        layers = getattr(getattr(self.module().model, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            msg = (f"text backbone '{self.name}' has no encoder.layer list to fine-tune; "
                   "set trainable_layers 0 for it")
            raise ModelError(msg)
        if self.trainable_layers > len(layers):
            msg = f"trainable_layers {self.trainable_layers} exceeds the {len(layers)} layers of '{self.name}'"
            raise ModelError(msg)
        return tuple(f"model.encoder.layer.{i}." for i in range(len(layers) - self.trainable_layers, len(layers)))

    def saved_state(self) -> dict[str, torch.Tensor]:
        """The fine-tuned layers (the rest is the package's files): a few MB per layer in the artifact."""
        if not self.trainable_layers:
            return {}
        prefixes = self._tuned_prefixes()
        return {k: v for k, v in self.module().state_dict().items() if k.startswith(prefixes)}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        if not self.trainable_layers:
            super().load_saved_state(state)
            return
        expected = set(self.saved_state())
        if set(state) != expected:
            msg = (f"text backbone '{self.name}' expects its {self.trainable_layers} tuned layer(s) "
                   f"({len(expected)} tensors), the artifact has {len(state)}")
            raise ValueError(msg)
        self.module().load_state_dict(state, strict=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        if not self.trainable_layers:
            return []
        prefixes = self._tuned_prefixes()
        tuned = []
        for name, p in self.module().named_parameters():
            if name.startswith(prefixes):
                tuned.append(p)
            else:
                p.requires_grad_(False)  # no gradients through the frozen layers: backward stays cheap
        return tuned

    def training_features(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        return self.module()(ids.to(self.device), mask.to(self.device)).float()

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

    def _padded_length(self, tokens: int) -> int:
        """A text's padded length: the next power of two from 16 (SigLIP: always ``max_length``)."""
        if self._layout.kind == "siglip":
            return self.max_length
        return min(self.max_length, max(16, 1 << (tokens - 1).bit_length()))

    def fixed_shape_batches(self, texts: Sequence[str]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """(rows of ``texts``, input_ids, attention_mask) at shapes fixed by each text's own length.

        Each batch is :data:`FIXED_ROWS` texts of one padded length (the last rows repeat a text;
        only the first ``len(rows)`` outputs are real). Padding to a power of two costs about what
        sorting by length saved, in exchange for rows that do not depend on their companions.
        """
        self.module()  # the tokenizer is loaded with the weights
        with self._tokenizer_lock:
            encoded = self._tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        buckets: dict[int, list[int]] = {}
        for row, ids in enumerate(encoded):
            buckets.setdefault(self._padded_length(len(ids)), []).append(row)
        for length, rows in buckets.items():
            for start in range(0, len(rows), FIXED_ROWS):
                chunk = rows[start : start + FIXED_ROWS]
                filled = [encoded[r] for r in chunk] + [encoded[chunk[-1]]] * (FIXED_ROWS - len(chunk))
                with self._tokenizer_lock:
                    batch = self._tokenizer.pad({"input_ids": filled}, padding="max_length", max_length=length,
                                                return_tensors="pt")
                ids = batch["input_ids"]
                yield chunk, ids, batch.get("attention_mask", torch.ones_like(ids))

    def fixed_shape_features(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros((len(texts), self.dim), dtype=torch.float32)
        for rows, ids, mask in self.fixed_shape_batches(texts):
            with self._inference():
                pooled = self.module()(ids.to(self.device), mask.to(self.device))
            out[rows] = pooled.float().cpu()[: len(rows)]
        return out


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

    def __init__(self, *, seed: int = 0, trainable: bool = False) -> None:
        super().__init__()
        self.seed = seed
        self.trainable_layers = int(trainable)  # the bag is its one layer
        self._module = self._load_module()
        self._id: str | None = None

    def _load_module(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.EmbeddingBag(self._BUCKETS, self.dim, mode="mean").eval()

    @property
    def backbone_id(self) -> str:
        if self._id is None or self.trainable_layers:  # a trainable bag changes under training
            self._id = backbone_id(self.name, {"state": state_digest(self.module().state_dict())})
        return self._id

    def _bag_inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            words = self._WORD.findall(text.lower())[: self.max_length]
            ids.extend(zlib.crc32(word.encode()) % self._BUCKETS for word in words)
        return (torch.tensor(ids, dtype=torch.long, device=self.device),
                torch.tensor(offsets, dtype=torch.long, device=self.device))

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        with self._inference():
            out = self.module()(*self._bag_inputs(texts))
        return out.float().cpu()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.module().parameters()) if self.trainable_layers else []

    def training_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.module()(*self._bag_inputs(texts)).float()
