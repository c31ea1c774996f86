"""The query tower shipped inside a model artifact as ONNX: search without PyTorch.

``mm-opensearch export-query-graph`` (an install with torch) writes ``<model>/query_graph/``:
``model.onnx`` (backbone pooling + query head, token ids in, L2-normalised vectors out, checked
against PyTorch when written), ``graph.json`` (the model id it was exported from and how to turn
texts into token ids) and, for Hugging Face backbones, ``tokenizer.json``. This module runs that
folder with ONNX Runtime and the ``tokenizers`` library only, so the search install
(``mm-opensearch[api]``) has neither torch nor transformers.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mm_opensearch.errors import ConfigError, ModelError
from mm_opensearch.towers.query_cache import QueryCache, normalize_query

__all__ = ["GRAPH_DIR", "GRAPH_FILE", "MODEL_FILE", "TOKENIZER_FILE", "OnnxQueryTower", "has_query_graph", "tokenize"]

GRAPH_DIR = "query_graph"
GRAPH_FILE = "graph.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
_WORD = re.compile(r"\w+")


def has_query_graph(folder: Path) -> bool:
    """Whether the model folder carries an exported query graph."""
    return (folder / GRAPH_DIR / GRAPH_FILE).is_file() and (folder / GRAPH_DIR / MODEL_FILE).is_file()


class _HashedWords:
    """The tiny-text backbone's tokenizer: lower-cased words hashed into buckets (no vocabulary)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.buckets, self.max_length = int(spec["buckets"]), int(spec["max_length"])

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [[zlib.crc32(w.encode()) % self.buckets for w in _WORD.findall(t.lower())[: self.max_length]] for t in texts]
        width = max(1, *(len(row) for row in rows)) if rows else 1
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        return ids, mask


class _HFTokenizer:
    """A Hugging Face fast tokenizer's ``tokenizer.json``, padded and truncated as the backbone did."""

    def __init__(self, path: Path, spec: dict[str, Any]) -> None:
        from tokenizers import Tokenizer  # noqa: PLC0415 - only HF backbones need it

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.enable_truncation(int(spec["max_length"]))
        fixed = int(spec["max_length"]) if spec.get("padding") == "max_length" else None
        self._tokenizer.enable_padding(pad_id=int(spec["pad_id"]), pad_token=spec["pad_token"], length=fixed)
        self._lock = threading.Lock()  # a Rust tokenizer with padding set is not shared by threads safely

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask


def _read_graph_spec(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / GRAPH_DIR / GRAPH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        msg = f"{folder / GRAPH_DIR / GRAPH_FILE} is unreadable ({e}); run `mm-opensearch export-query-graph {folder}` again"
        raise ModelError(msg) from e


def tokenize(folder: Path, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) of ``texts`` as the graph in ``folder`` reads them."""
    return _tokenizer(folder, _read_graph_spec(folder))(texts)


def _tokenizer(folder: Path, spec: dict[str, Any]) -> _HashedWords | _HFTokenizer:
    tokens = spec["tokenizer"]
    if tokens["kind"] == "hashed-words":
        return _HashedWords(tokens)
    return _HFTokenizer(folder / GRAPH_DIR / TOKENIZER_FILE, tokens)


class OnnxQueryTower:
    """A model folder's exported query tower: satisfies :class:`mm_opensearch.hybrid.tower.QueryTower`.

    It refuses a graph exported from other weights than the folder's (``graph.json``'s model id
    against ``config.json``'s): a stale graph would put queries in another vector space.
    """

    def __init__(self, folder: Path, *, threads: int = 1, query_cache_size: int = 1024) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - only search-time encoding needs it

        try:
            document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            msg = f"model folder {folder} has no readable config.json ({e}); point MMOS_MODEL_DIR at a folder written by train"
            raise ModelError(msg) from e
        spec = _read_graph_spec(folder)
        if spec.get("model_id") != document.get("model_id"):
            msg = (
                f"{folder / GRAPH_DIR} was exported from model {spec.get('model_id')}, the folder holds "
                f"{document.get('model_id')}: run `mm-opensearch export-query-graph {folder}` where torch is installed"
            )
            raise ModelError(msg)
        self._model_id, self._dim = str(document["model_id"]), int(document["dim"])
        self.config = SimpleNamespace(hybrid=document.get("config", {}).get("hybrid"))  # the searcher's tuned fusion
        self._tokenize = _tokenizer(folder, spec)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(folder / GRAPH_DIR / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a damaged file
            msg = f"{folder / GRAPH_DIR / MODEL_FILE} does not load ({e}); run `mm-opensearch export-query-graph {folder}` again"
            raise ModelError(msg) from e
        self.query_cache = QueryCache(query_cache_size)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 graph outputs, no cache (what the export is checked with)."""
        ids, mask = self._tokenize(texts)
        return np.asarray(self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0], dtype=np.float32)

    def encode_queries(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 L2-normalised query vectors; repeated queries come from the LRU cache."""
        keys = [normalize_query(text) for text in texts]
        for position, key in enumerate(keys):
            if not key:
                msg = f"query {position} is empty; give a non-empty query text"
                raise ConfigError(msg)
        found = {key: vector for key in dict.fromkeys(keys) if (vector := self.query_cache.get(key)) is not None}
        misses = [key for key in dict.fromkeys(keys) if key not in found]
        for start in range(0, len(misses), batch_size):
            batch = misses[start : start + batch_size]
            for key, vector in zip(batch, self.features(batch), strict=True):
                self.query_cache.put(key, vector)
                found[key] = vector
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)
