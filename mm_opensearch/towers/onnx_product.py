"""The product tower run by ONNX Runtime on CPUs: both backbones and the heads as exported graphs.

Backfills are bounded by the product forward. ONNX Runtime runs the same graphs as PyTorch with
fused kernels and less per-operator dispatch (measured in docs/encoding.md). Each graph is
exported once per model id, extractor (the backbones' ids) and opset, cached under
``<cache_dir>/onnx/product-<key>-<part>.onnx`` (a damaged file is exported again), and the whole
tower is checked against PyTorch by cosine on fixed images and texts before it is used: >= 0.999
(float) or >= 0.99 (``quantized``: int8 copies of the MatMuls). Any failure leaves PyTorch in
charge with a log line, never a failed encode.

Pooling of the image feature map (mean and the coarse token grid) stays in PyTorch: adaptive
pooling of a 7x7 map to 3x3 does not export, and it is a negligible share of the forward.
A part that cannot be exported (a CLIP/SigLIP vision tower, a text backbone without token ids)
runs in PyTorch inside the same tower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mm_opensearch.towers.backbone_base import ImageBackbone, ImageFeatures, TextBackbone
from mm_opensearch.towers.heads import ProductHeads, ProductVectors
from mm_opensearch.towers.image_backbones import _FeatureMapBackbone
from mm_opensearch.towers.text_backbones import TinyTextBackbone

if TYPE_CHECKING:
    from mm_opensearch.towers.model import MultimodalModel

__all__ = ["OPSET", "FLOAT_MIN_COSINE", "INT8_MIN_COSINE", "ProductTower", "product_graph_key",
           "build_onnx_product_tower", "torch_product_tower", "probe_cosines"]

logger = logging.getLogger(__name__)

OPSET = 17
FLOAT_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99
_PROBE_TEXTS = ["Red floral print summer dress", "Men black leather formal shoes", "Blue denim jacket", "Watch"]


class ProductTower:
    """What encodes products: a text backbone, an image backbone and the heads, whatever runs them."""

    def __init__(self, text: TextBackbone, image: ImageBackbone,
                 heads: Callable[..., ProductVectors], runtime: str) -> None:
        self.text, self.image, self.heads, self.runtime = text, image, heads, runtime


def torch_product_tower(model: MultimodalModel) -> ProductTower:
    """The PyTorch tower: the model's own backbones and heads."""
    return ProductTower(model.text_backbone, model.image_backbone, model.product_vectors_from_features, "torch")


def product_graph_key(model_id: str, extractor: str, opset: int = OPSET) -> str:
    """Names the cached graphs: a new model id, feature extractor or opset never reuses an old export."""
    digest = hashlib.sha256(json.dumps([model_id, extractor, opset]).encode()).hexdigest()[:12]
    return f"{model_id}-{digest}-op{opset}"


# --- graphs ------------------------------------------------------------------------------------


class _FeatureMapGraph(nn.Module):
    """Normalised pixels -> the backbone's last feature map (n, dim, h, w)."""

    def __init__(self, backbone: _FeatureMapBackbone) -> None:
        super().__init__()
        self.backbone_module = backbone.module()
        self._feature_map = backbone._feature_map  # noqa: SLF001 - the one definition of the map

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._feature_map(self.backbone_module, pixels).float()


class _HashBagGraph(nn.Module):
    """The tiny hashing text backbone as a padded gather + masked mean (EmbeddingBag does not export)."""

    def __init__(self, bag: nn.EmbeddingBag) -> None:
        super().__init__()
        self.weight = bag.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        summed = (nn.functional.embedding(input_ids, self.weight) * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1.0)


def _tiny_tokenize(backbone: TinyTextBackbone, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[zlib.crc32(w.encode()) % backbone._BUCKETS for w in backbone._WORD.findall(t.lower())[: backbone.max_length]]
            for t in texts]
    width = max(1, *(len(r) for r in rows)) if rows else 1
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, : len(row)], mask[j, : len(row)] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


class _HeadsGraph(nn.Module):
    """The product heads on backbone features: (fused, text, image) vectors."""

    def __init__(self, heads: ProductHeads) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, text: torch.Tensor, image: torch.Tensor, tokens: torch.Tensor,
                text_mask: torch.Tensor, image_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.heads(text, image, tokens, text_mask, image_mask)
        return out.fused, out.text, out.image


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str]) -> Path:
    """Write ``module`` as ONNX, batch (and token) axes dynamic, atomically: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(handle)
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in inputs + outputs}
    for name in ("input_ids", "attention_mask"):
        if name in inputs:
            axes[name][1] = "tokens"
    try:
        # The exporter warns about patterns it may translate loosely (the heads' input check); the
        # tower is checked numerically against PyTorch before use, so those warnings are noise here.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, tmp, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class _DropQuantizerHint(logging.Filter):
    """onnxruntime's quantizer logs a pre-processing hint on the root logger for every graph: not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize(source: Path, path: Path) -> Path:
    from mm_opensearch.towers.onnx_text import quantize_graph  # noqa: PLC0415 - loads onnxruntime.quantization

    hint = _DropQuantizerHint()
    logging.getLogger().addFilter(hint)
    try:
        return quantize_graph(source, path)
    finally:
        logging.getLogger().removeFilter(hint)


class _Session:
    """One ONNX Runtime CPU session over a cached graph, exported (and quantized) when missing or damaged."""

    def __init__(self, path: Path, make: Callable[[], Path], *, threads: int, quantized: bool) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - only this runtime needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        target = path.with_name(f"{path.stem}-int8.onnx") if quantized else path

        def make_target() -> None:
            if quantized:
                if not path.is_file():
                    make()
                _quantize(path, target)
            else:
                make()

        if not target.is_file():
            make_target()
        try:
            self._session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - a damaged cache file is replaced, whatever the error
            logger.info("cached ONNX graph %s does not load (%s); making it again", target, e)
            make_target()
            self._session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        self.path = target
        self._inputs = {i.name for i in self._session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds``; inputs the graph does not read (weighted-sum fusion ignores tokens) are left out."""
        return self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})


# --- backbones and heads backed by sessions -------------------------------------------------------


class _OnnxImageBackbone(ImageBackbone):
    """An image backbone whose feature map comes from ONNX Runtime; pooling as the PyTorch one."""

    def __init__(self, torch_backbone: _FeatureMapBackbone, session: _Session, cache_suffix: str) -> None:
        super().__init__()
        self.source, self.session = torch_backbone, session
        self.name, self.dim = torch_backbone.name, torch_backbone.dim
        self.preprocess, self.num_tokens = torch_backbone.preprocess, torch_backbone.num_tokens
        self._cache_suffix = cache_suffix

    @property
    def backbone_id(self) -> str:
        return self.source.backbone_id + self._cache_suffix  # never PyTorch's cache (see the suffix)

    def _load_module(self) -> nn.Module:
        raise NotImplementedError("runs in ONNX Runtime")

    def features(self, batch: torch.Tensor) -> ImageFeatures:
        pixels = self._prepare(batch).numpy()
        feature_map = torch.from_numpy(self.session.run({"pixels": pixels})[0])
        return self.source.pool(feature_map, batch)

    @property
    def token_dim(self) -> int:
        return self.source.token_dim

    def cached_parts(self) -> tuple[ImageBackbone, ...] | None:
        parts = self.source.cached_parts()
        if not parts:
            return None
        plain, *rest = parts
        return (_OnnxImageBackbone(plain, self.session, self._cache_suffix), *rest)  # type: ignore[arg-type]


class _OnnxTextBackbone(TextBackbone):
    """A text backbone whose pooled features come from ONNX Runtime over the same token ids."""

    def __init__(self, torch_backbone: TextBackbone, session: _Session,
                 tokenize: Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]], cache_suffix: str) -> None:
        super().__init__()
        self.source, self.session, self._tokenize = torch_backbone, session, tokenize
        self.name, self.dim, self.max_length = torch_backbone.name, torch_backbone.dim, torch_backbone.max_length
        self._cache_suffix = cache_suffix

    @property
    def backbone_id(self) -> str:
        return self.source.backbone_id + self._cache_suffix

    def _load_module(self) -> nn.Module:
        raise NotImplementedError("runs in ONNX Runtime")

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        return self._run(*self._tokenize(texts))

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(feeds)[0])

    def fixed_shape_features(self, texts: Sequence[str]) -> torch.Tensor:
        """The source backbone's fixed shapes, run here: the cached rows do not depend on their batch."""
        batches = getattr(self.source, "fixed_shape_batches", None)
        if batches is None:
            return super().fixed_shape_features(texts)
        out = torch.zeros((len(texts), self.dim), dtype=torch.float32)
        for rows, ids, mask in batches(texts):
            out[rows] = self._run(ids, mask)[: len(rows)].float()
        return out


class _OnnxHeads:
    def __init__(self, session: _Session) -> None:
        self.session = session

    def __call__(self, text: Any, image: Any, tokens: Any, text_mask: Any, image_mask: Any) -> ProductVectors:
        def arr(x: Any, dtype: Any) -> np.ndarray:
            return np.ascontiguousarray(torch.as_tensor(x).cpu().numpy().astype(dtype, copy=False))

        t_mask, i_mask = arr(text_mask, bool), arr(image_mask, bool)
        fused, t, i = self.session.run({"text": arr(text, np.float32), "image": arr(image, np.float32),
                                        "tokens": arr(tokens, np.float32), "text_mask": t_mask, "image_mask": i_mask})
        return ProductVectors(torch.from_numpy(fused), torch.from_numpy(t), torch.from_numpy(i),
                              torch.from_numpy(t_mask), torch.from_numpy(i_mask))


# --- building and checking -----------------------------------------------------------------------


def _probe_pixels(backbone: ImageBackbone, n: int = 3) -> torch.Tensor:
    """Fixed uint8 images: smooth colour gradients plus seeded noise (deterministic, not all alike)."""
    side = backbone.preprocess.crop
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 255, side)
    images = []
    for k in range(n):
        base = torch.stack([ramp.view(1, -1).expand(side, side), ramp.view(-1, 1).expand(side, side),
                            torch.full((side, side), 60.0 * k)])
        noise = torch.randint(0, 60, (3, side, side), generator=generator).float()
        images.append((base + noise).clamp(0, 255).to(torch.uint8))
    return torch.stack(images)


def probe_cosines(reference: ProductTower, candidate: ProductTower) -> dict[str, float]:
    """Lowest cosine between the two towers' fused, text and image vectors on the fixed probes."""
    pixels = _probe_pixels(reference.image)
    texts = _PROBE_TEXTS[: len(pixels)]
    out = {}
    vectors = []
    for tower in (reference, candidate):
        image = tower.image.features(pixels)
        text = tower.text.features(texts)
        ones = torch.ones(len(texts), dtype=torch.bool)
        vectors.append(tower.heads(text.float(), image.pooled.float(), image.tokens.float(), ones, ones))
    for name in ("fused", "text", "image"):
        a, b = getattr(vectors[0], name).float().cpu(), getattr(vectors[1], name).float().cpu()
        out[name] = float(nn.functional.cosine_similarity(a, b).min())
    return out


def _text_graph(backbone: TextBackbone) -> tuple[nn.Module, Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]] | None:
    if isinstance(backbone, TinyTextBackbone):
        return _HashBagGraph(backbone.module()), lambda texts: _tiny_tokenize(backbone, texts)
    tokenize = getattr(backbone, "tokenize", None)
    if callable(tokenize):
        return backbone.module(), tokenize
    return None


def build_onnx_product_tower(model: MultimodalModel, *, quantized: bool = False) -> ProductTower | None:
    """The product tower on ONNX Runtime (exported or loaded from the cache), or None when it fails its check."""
    text_b, image_b = model.text_backbone, model.image_backbone
    extractor = f"{text_b.backbone_id}+{image_b.backbone_id}"
    key = product_graph_key(model.model_id, extractor)
    folder = model.settings.cache_dir / "onnx"
    threads = torch.get_num_threads()
    # Own cache keys: ONNX Runtime's rows differ from PyTorch's in the last bits, which the float16
    # cache can round apart, so sharing would make a cache's rows depend on which runtime came first.
    suffix = "-onnx-int8" if quantized else "-onnx"
    reference = torch_product_tower(model)
    try:
        with model.evaluating():
            text: TextBackbone = text_b
            graph = _text_graph(text_b)
            if graph is not None:
                module, tokenize = graph
                ids, mask = tokenize(_PROBE_TEXTS)
                path = folder / f"product-{key}-text.onnx"
                session = _Session(path, lambda: _export(module, (ids, mask), path, ["input_ids", "attention_mask"],
                                                         ["features"]), threads=threads, quantized=quantized)
                text = _OnnxTextBackbone(text_b, session, tokenize, suffix)
            image: ImageBackbone = image_b
            if isinstance(image_b, _FeatureMapBackbone):
                pixels = image_b._prepare(_probe_pixels(image_b, 2))  # noqa: SLF001
                image_graph = _FeatureMapGraph(image_b)
                path = folder / f"product-{key}-image.onnx"
                # Dynamic quantization of convolutions (ConvInteger) is slower than float on CPUs and the
                # image graph has no MatMul worth it: int8 applies to the text and heads graphs only.
                session = _Session(path, lambda: _export(image_graph, (pixels,), path, ["pixels"], ["feature_map"]),
                                   threads=threads, quantized=False)
                image = _OnnxImageBackbone(image_b, session, suffix)
            n, k = 2, image_b.num_tokens
            example = (torch.zeros(n, text_b.dim), torch.zeros(n, image_b.dim), torch.zeros(n, k, image_b.token_dim),
                       torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool))
            heads_graph = _HeadsGraph(model.heads["product"])
            path = folder / f"product-{key}-heads.onnx"
            heads = _OnnxHeads(_Session(path, lambda: _export(heads_graph, example, path,
                                                              ["text", "image", "tokens", "text_mask", "image_mask"],
                                                              ["fused", "text_vectors", "image_vectors"]),
                                        threads=threads, quantized=quantized))
            tower = ProductTower(text, image, heads, "onnx-int8" if quantized else "onnx")
            cosines = probe_cosines(reference, tower)
    except Exception as e:  # noqa: BLE001 - any exporter or runtime failure leaves PyTorch in charge
        logger.warning("ONNX Runtime cannot run the product tower %s (%s: %s); encoding with PyTorch",
                       key, type(e).__name__, e)
        return None
    floor = INT8_MIN_COSINE if quantized else FLOAT_MIN_COSINE
    if min(cosines.values()) < floor:
        logger.warning("ONNX product tower %s is only %s cosine-close to PyTorch (< %g); encoding with PyTorch",
                       key, {k: round(v, 4) for k, v in cosines.items()}, floor)
        return None
    return tower
