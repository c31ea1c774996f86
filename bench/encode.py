"""Benchmark product encoding: PyTorch vs ONNX Runtime (float, int8) end to end, and the raw forward.

CPU (default): the committed default model, the first ``--n`` catalog products (images from the
data folder), the feature cache off. End to end = read + decode + resize the image, tokenize +
encode the text, both backbones, heads and fusion (``MultimodalModel.encode_products``), once per
``MMOS_PRODUCT_RUNTIME``: torch, onnx, onnx-int8. Raw forward = the PyTorch text and image backbone
forwards alone on the same batches, images already decoded. All in one run on the same model, the
measurements alternated and the best of ``--repeats`` kept (on a shared machine this cancels most
of the load that lands on one of them only): read the ratios, not the absolute rates. The ONNX
rows also give the lowest and mean cosine of their fused vectors to PyTorch's.

    PYTHONPATH=. python bench/encode.py --n 256

``--device cuda``: images/s for decode (nvJPEG where torchvision has it, else PIL on the CPU),
forward (bf16/fp16 autocast) and end to end, on synthesized JPEGs and random-init backbones of the
default architecture (EfficientNet-Lite0 if its package is installed, else torchvision's
EfficientNet-B0 of the same family): it needs only the repo and PyTorch (+ torchvision).

    PYTHONPATH=. python bench/encode.py --device cuda --n 2048
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch


def _cpu(args: argparse.Namespace) -> None:
    from mm_opensearch.catalog import CatalogSchema, read_catalog  # noqa: PLC0415 - the cuda bench needs neither
    from mm_opensearch.config import Settings  # noqa: PLC0415
    from mm_opensearch.images import load_image  # noqa: PLC0415
    from mm_opensearch.towers import EncoderInput, MultimodalModel, load_default_model  # noqa: PLC0415
    from mm_opensearch.towers.preprocess import resize_crop  # noqa: PLC0415

    base = Settings()
    data_dir = (args.data_dir or base.data_dir).resolve()
    products = list(read_catalog(data_dir / "products.jsonl.gz", CatalogSchema.from_settings(base), limit=args.n))
    products = [p for p in products if p.image and p.text]
    roots = base.image_roots_or(data_dir)
    models: dict[str, MultimodalModel] = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        settings = base.model_copy(update={"product_runtime": runtime, "decode_processes": args.decode_processes})
        model = load_default_model(settings, device="cpu", use_feature_cache=False)
        start = time.perf_counter()
        tower = model.product_tower()
        if tower.runtime != runtime:
            raise SystemExit(f"{runtime}: the tower fell back to {tower.runtime}; see the log above")
        print(f"{runtime}: tower ready in {time.perf_counter() - start:.1f} s")
        model.encode_products(products[: args.batch_size], batch_size=args.batch_size, image_roots=roots)  # warm up
        models[runtime] = model

    def end_to_end(model: MultimodalModel) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        encoding = model.encode_products(products, batch_size=args.batch_size, image_roots=roots)
        elapsed = time.perf_counter() - start
        failed = [e for e in encoding.errors if e]
        if failed:
            raise SystemExit(f"{len(failed)} products failed, e.g. {failed[0]}")
        return len(products) / elapsed, encoding.fused

    torch_model = models["torch"]
    preprocess = torch_model.image_backbone.preprocess
    pixels = [resize_crop(load_image(p.image, base, roots=roots), preprocess) for p in products]
    texts = sorted((p.text for p in products), key=len)

    def raw_forward(products_: Sequence[EncoderInput]) -> float:
        start = time.perf_counter()
        for i in range(0, len(products_), args.batch_size):
            torch_model.text_backbone.features(texts[i : i + args.batch_size])
            torch_model.image_backbone.features(torch.stack(pixels[i : i + args.batch_size]))
        return len(products_) / (time.perf_counter() - start)

    best: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for runtime, model in models.items():
            rate, vectors[runtime] = end_to_end(model)
            best[runtime] = max(best.get(runtime, 0.0), rate)
        best["raw"] = max(best.get("raw", 0.0), raw_forward(products))

    load = os.getloadavg()[0]
    print(f"model {torch_model.model_id} ({torch_model.text_backbone.backbone_id} + "
          f"{torch_model.image_backbone.backbone_id}); {len(products)} products, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, decode processes {args.decode_processes}, "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    print(f"{'runtime':<22} {'products/s':>10} {'x torch':>8} {'min cos':>8} {'mean cos':>9}")
    for runtime in ("torch", "onnx", "onnx-int8"):
        a, b = vectors[runtime], vectors["torch"]
        cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"{runtime + ' end to end':<22} {best[runtime]:>10.1f} {best[runtime] / best['torch']:>8.2f} "
              f"{cos.min():>8.4f} {cos.mean():>9.4f}")
    print(f"{'torch raw forward':<22} {best['raw']:>10.1f} {best['raw'] / best['torch']:>8.2f}")


def _synthetic_jpegs(n: int, side: tuple[int, int]) -> list[bytes]:
    """``n`` distinct JPEGs of a product-photo size: smooth colour fields plus noise (no data folder)."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    out = []
    for _ in range(min(n, 64)):  # 64 distinct files, repeated: decode cost does not depend on the content
        base = rng.integers(0, 255, (1, 1, 3)) + np.linspace(0, 60, side[0])[:, None, None]
        pixels = np.clip(base + rng.normal(0, 12, (side[0], side[1], 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return [out[j % len(out)] for j in range(n)]


def _random_init_image_net() -> tuple[str, torch.nn.Module]:
    try:
        from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415

        net = EfficientNet.from_name("efficientnet-lite0")
        return "efficientnet-lite0 (random init)", _Features(net.extract_features)
    except ImportError:
        from torchvision.models import efficientnet_b0  # noqa: PLC0415

        return "efficientnet-b0 (torchvision, random init)", _Features(efficientnet_b0(weights=None).features)


class _Features(torch.nn.Module):
    def __init__(self, fn: torch.nn.Module | object) -> None:
        super().__init__()
        self.owner = getattr(fn, "__self__", fn)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _standalone(name: str) -> ModuleType:
    """A towers module loaded from its file, without the package (whose settings need pydantic & co.)."""
    path = Path(__file__).resolve().parents[1] / "mm_opensearch" / "towers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_mmos_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda(args: argparse.Namespace) -> None:
    device_module, gpu_decode = _standalone("device"), _standalone("gpu_decode")
    autocast_dtype, batch_size_for_free_memory = device_module.autocast_dtype, device_module.batch_size_for_free_memory
    decode_resize, gpu_jpeg_decode_available = gpu_decode.decode_resize, gpu_decode.gpu_jpeg_decode_available

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to PyTorch here")
    device = torch.device("cuda")
    name, net = _random_init_image_net()
    net = net.to(device).eval().to(memory_format=torch.channels_last)
    dtype = autocast_dtype(args.precision, bf16_supported=torch.cuda.is_bf16_supported())
    free, total = torch.cuda.mem_get_info()
    batch = args.batch_size or batch_size_for_free_memory(free)
    jpegs = _synthetic_jpegs(args.n, (1440, 1080) if args.large else (300, 224))
    side = 224
    on_gpu = gpu_jpeg_decode_available()
    mean = torch.tensor([0.498] * 3, device=device).view(1, 3, 1, 1)

    def decode(chunk: list[bytes]) -> torch.Tensor:
        return decode_resize(chunk, side, device=device)

    def forward(pixels: torch.Tensor) -> None:
        x = ((pixels.float() / 255.0 - mean) / 0.502).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            fm = net(x)
            fm.float().mean(dim=(2, 3))

    chunks = [jpegs[i : i + batch] for i in range(0, len(jpegs), batch)]
    decode(chunks[0]); forward(decode(chunks[0])); torch.cuda.synchronize()  # warm up (cuDNN autotune, nvJPEG init)
    results: dict[str, float] = {}
    start = time.perf_counter()
    decoded = [decode(c) for c in chunks]
    torch.cuda.synchronize()
    results["decode"] = len(jpegs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for pixels in decoded:
        forward(pixels)
    torch.cuda.synchronize()
    results["forward"] = len(jpegs) / (time.perf_counter() - start)
    del decoded
    start = time.perf_counter()
    for c in chunks:
        forward(decode(c))
    torch.cuda.synchronize()
    results["end to end"] = len(jpegs) / (time.perf_counter() - start)
    print(f"{torch.cuda.get_device_name()}; {name}; {dtype}; batch {batch} (free {free / 2**30:.1f} of "
          f"{total / 2**30:.1f} GiB); decode {'nvJPEG on the GPU' if on_gpu else 'PIL on the CPU'}; "
          f"{len(jpegs)} JPEGs {'1080x1440' if args.large else '224x300'}; torch {torch.__version__}")
    for stage, rate in results.items():
        print(f"{stage:<12} {rate:>10.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--n", type=int, default=256, help="products (cpu) or images (cuda)")
    parser.add_argument("--batch-size", type=int, default=0, help="default: 32 on cpu, from free memory on cuda")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs; the best of each is kept")
    parser.add_argument("--decode-processes", type=int, default=0, help="MMOS_DECODE_PROCESSES for every runtime")
    parser.add_argument("--precision", choices=["bf16", "fp16", "float32"], default="bf16", help="cuda only")
    parser.add_argument("--large", action="store_true", help="cuda: 1080x1440 JPEGs instead of catalog-sized ones")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: Settings().data_dir")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.device == "cuda":
        _cuda(args)
    else:
        args.batch_size = args.batch_size or 32
        _cpu(args)


if __name__ == "__main__":
    main()
