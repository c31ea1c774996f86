"""The query tower run by ONNX Runtime: the search-time fast path on CPUs.

At search time the tower encodes one short query per request. PyTorch spends much of that in
per-operator dispatch, even for the small query head; ONNX Runtime runs the same graph, backbone
pooling and head together, with fused kernels, in well under half the time (docs/measurements.md,
"Query encoding") and gives the same vectors to float rounding. The graph is exported from the
loaded weights on first use and cached under ``<cache_dir>/onnx/<key>.onnx`` (a damaged file is
exported again); it is checked against PyTorch before it is used, and any failure leaves PyTorch
in charge with a warning rather than failing searches.

``quantized=True`` runs an int8 copy of the graph instead (dynamic quantization of the MatMuls,
weights per channel): faster again, at the cost of vectors a little further from PyTorch's and a
small loss of nDCG@10 (docs/measurements.md, "Query encoding"), so it is opt-in.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

__all__ = [
    "TokenTextBackbone",
    "QueryTowerGraph",
    "OnnxTextEncoder",
    "export_graph",
    "export_query_graph",
    "quantize_graph",
]

logger = logging.getLogger(__name__)

_OPSET = 17
_PROBES = ["red floral summer dress", "men black leather formal shoes with laces"]
_TOLERANCE = 1e-4
_INT8_MIN_COSINE = 0.97  # measured 0.984 at worst over 400 queries: below this the quantization went wrong


class TokenTextBackbone(Protocol):
    """A text backbone that reads token ids (what an ONNX graph can take as input)."""

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class QueryTowerGraph(nn.Module):
    """Backbone pooling then the query head: token ids in, L2-normalised query vectors out."""

    def __init__(self, pooled: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.pooled, self.head = pooled, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))


def export_graph(module: nn.Module, backbone: TokenTextBackbone, path: Path) -> Path:
    """Write ``module`` (ids, mask -> vectors) as ONNX to ``path``, atomically: readers never see half a file."""
    ids, mask = backbone.tokenize(_PROBES)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        # The exporter warns about patterns it may translate loosely; the result is checked
        # numerically against PyTorch before use, so its warnings would only be noise here.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                (ids, mask),
                tmp,
                input_names=["input_ids", "attention_mask"],
                output_names=["vectors"],
                dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                              "vectors": {0: "batch"}},
                opset_version=_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def quantize_graph(source: Path, path: Path) -> Path:
    """Write an int8 copy of the graph ``source`` to ``path`` (atomically, as :func:`export_graph`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415 - only this runtime needs it

    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        quantize_dynamic(source, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class OnnxTextEncoder:
    """Texts -> vectors by an ONNX Runtime session over an exported graph (see :func:`export_graph`)."""

    def __init__(self, backbone: TokenTextBackbone, model_path: Path, *, dim: int, threads: int) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - only search-time encoding needs it

        self.backbone = backbone
        self.dim = dim
        self.path = model_path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    @classmethod
    def build(
        cls,
        module: nn.Module,
        backbone: TokenTextBackbone,
        *,
        path: Path,
        dim: int,
        reference: Callable[[list[str]], torch.Tensor],
        quantized: bool = False,
    ) -> OnnxTextEncoder | None:
        """The cached (or newly exported) graph of ``module``, checked against ``reference``; None if that fails.

        ``quantized``: its int8 copy (``<path stem>-int8.onnx``), checked by cosine, not equality.
        Runs with as many threads as torch (``Settings.torch_threads``), so one knob sets both.
        """
        try:
            def float_graph() -> OnnxTextEncoder:
                return cls._load_or_make(backbone, path, dim, make=lambda: export_graph(module, backbone, path))

            if quantized:  # the float graph is loaded (or exported) only to make a missing int8 copy
                int8 = path.with_name(f"{path.stem}-int8.onnx")
                encoder = cls._load_or_make(backbone, int8, dim, make=lambda: quantize_graph(float_graph().path, int8))
            else:
                encoder = float_graph()
            got, expected = encoder.features(_PROBES), reference(_PROBES)
        except Exception as e:  # noqa: BLE001 - any exporter or runtime failure leaves PyTorch in charge
            logger.warning("ONNX Runtime cannot run %s (%s: %s); encoding with PyTorch", path.stem, type(e).__name__, e)
            return None
        if quantized:
            cosine = float(torch.nn.functional.cosine_similarity(got, expected).min())
            if cosine < _INT8_MIN_COSINE:
                logger.warning("int8 graph %s is only %.3f cosine-close to PyTorch (< %g); encoding with PyTorch",
                               encoder.path.stem, cosine, _INT8_MIN_COSINE)
                return None
        elif (gap := float((got - expected).abs().max())) > _TOLERANCE:
            logger.warning("ONNX export %s differs from PyTorch by %.2g (> %g); encoding with PyTorch",
                           path.stem, gap, _TOLERANCE)
            return None
        return encoder

    @classmethod
    def _load_or_make(
        cls, backbone: TokenTextBackbone, path: Path, dim: int, *, make: Callable[[], Path]
    ) -> OnnxTextEncoder:
        threads = torch.get_num_threads()
        if path.is_file():
            try:
                return cls(backbone, path, dim=dim, threads=threads)
            except Exception as e:  # noqa: BLE001 - a damaged cache file is replaced, whatever the error
                logger.info("cached ONNX graph %s does not load (%s); making it again", path, e)
        make()
        return cls(backbone, path, dim=dim, threads=threads)

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) float32 outputs of the graph: PyTorch's to float rounding (int8: close, see the module)."""
        ids, mask = self.backbone.tokenize(texts)
        feeds = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        return torch.from_numpy(self._session.run(None, feeds)[0])


class _HashedWordsPooling(nn.Module):
    """The tiny-text backbone's EmbeddingBag mean written over (ids, mask), which ONNX can take."""

    def __init__(self, bag: nn.EmbeddingBag) -> None:
        super().__init__()
        self.bag = bag

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.bag.weight.dtype)
        summed = (nn.functional.embedding(input_ids, self.bag.weight) * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)  # no words: zeros, as the bag gives


class _ArtifactTokens:
    """Tokenizes as the shipped graph will (``query_graph.tokenize``), so the export runs what search runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from mm_opensearch.towers.query_graph import tokenize  # noqa: PLC0415 - a sibling, torch-free

        ids, mask = tokenize(self.folder, texts)
        return torch.from_numpy(ids), torch.from_numpy(mask)


def export_query_graph(model: Any, folder: Path) -> Path:
    """Write ``folder/query_graph`` for ``model`` (a saved MultimodalModel), checked against PyTorch.

    The search install runs it without torch (:class:`mm_opensearch.towers.query_graph.OnnxQueryTower`).
    Raises ModelError when the backbone cannot be exported or the graph disagrees with PyTorch.
    """
    from mm_opensearch.errors import ModelError  # noqa: PLC0415
    from mm_opensearch.towers import query_graph as shipped  # noqa: PLC0415
    from mm_opensearch.towers.text_backbones import HFTextBackbone, TinyTextBackbone  # noqa: PLC0415

    backbone = model.query_backbone
    out = folder / shipped.GRAPH_DIR
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(backbone, TinyTextBackbone):
        pooled: nn.Module = _HashedWordsPooling(backbone.module())
        tokens: dict[str, Any] = {"kind": "hashed-words", "buckets": backbone._BUCKETS, "max_length": backbone.max_length}
    elif isinstance(backbone, HFTextBackbone):
        pooled = backbone.module()
        hf = backbone._tokenizer
        hf.backend_tokenizer.save(str(out / shipped.TOKENIZER_FILE))
        tokens = {
            "kind": "huggingface",
            "max_length": backbone.max_length,
            "padding": "max_length" if backbone._layout.kind == "siglip" else "longest",
            "pad_id": hf.pad_token_id if hf.pad_token_id is not None else 0,
            "pad_token": hf.pad_token or "[PAD]",
        }
    else:
        msg = f"the query backbone {backbone.name!r} cannot be exported to ONNX; search with MMOS_QUERY_RUNTIME=torch"
        raise ModelError(msg)
    spec = {"model_id": model.model_id, "dim": model.dim, "opset": _OPSET, "tokenizer": tokens}
    (out / shipped.GRAPH_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with model.evaluating():
        export_graph(QueryTowerGraph(pooled, model.heads["query"]), _ArtifactTokens(folder), out / shipped.MODEL_FILE)
        expected = model.query_vectors_from_features(backbone.features(_PROBES)).float().cpu().numpy()
    got = shipped.OnnxQueryTower(folder, threads=1, query_cache_size=0).features(_PROBES)
    if (gap := float(np.abs(got - expected).max())) > _TOLERANCE:
        msg = f"the exported query graph differs from PyTorch by {gap:.2g} (> {_TOLERANCE:g}); search with MMOS_QUERY_RUNTIME=torch"
        raise ModelError(msg)
    return out
