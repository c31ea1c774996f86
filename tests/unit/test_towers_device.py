"""Device choice, CUDA precision and batch size, with the CUDA probe faked: nothing here needs a GPU."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.towers.device import (
    DeviceUnavailableError,
    autocast_dtype,
    batch_size_for_free_memory,
    select_device,
)
from mm_opensearch.towers.extract import _gpu_decodable
from mm_opensearch.towers.gpu_decode import decode_resize, gpu_jpeg_decode_available
from mm_opensearch.towers.preprocess import resize_crop
from mm_opensearch.towers.config import ImagePreprocess


@pytest.mark.parametrize(("requested", "cuda", "expected"), [
    ("auto", True, "cuda"), ("auto", False, "cpu"), (None, True, "cuda"), ("cpu", True, "cpu"),
    ("cuda", True, "cuda"), ("cuda:1", True, "cuda:1"), ("CPU", False, "cpu"),
])
def test_device_follows_the_setting_and_the_probe(requested, cuda, expected) -> None:
    assert select_device(requested, cuda_available=cuda) == torch.device(expected)


def test_cuda_requested_without_a_gpu_names_the_setting_and_the_fix() -> None:
    with pytest.raises(DeviceUnavailableError, match="MMOS_DEVICE=cuda .*set MMOS_DEVICE=cpu or auto"):
        select_device("cuda", cuda_available=False)
    with pytest.raises(DeviceUnavailableError, match="MMOS_DEVICE=tpu is not a device"):
        select_device("tpu", cuda_available=True)


def test_half_precision_prefers_bf16_and_falls_back_to_fp16() -> None:
    assert autocast_dtype("bf16", bf16_supported=True) is torch.bfloat16
    assert autocast_dtype("bf16", bf16_supported=False) is torch.float16
    assert autocast_dtype("fp16", bf16_supported=True) is torch.float16
    assert autocast_dtype("float32", bf16_supported=True) is torch.float32


def test_batch_size_is_a_power_of_two_within_half_the_free_memory() -> None:
    mib = 1 << 20
    assert batch_size_for_free_memory(80 * 1024 * mib, per_item_bytes=48 * mib) == 512  # 853 fit in half
    assert batch_size_for_free_memory(1024 * mib, per_item_bytes=48 * mib) == 8  # 10 fit: the floor
    assert batch_size_for_free_memory(10**15) == 1024
    assert batch_size_for_free_memory(0) == 8


def test_the_model_runs_where_the_faked_probe_and_the_setting_say(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = Settings(cache_dir=tmp_path, device="auto")
    assert MultimodalModel.from_config(ModelConfig.tiny(), settings=settings).device.type == "cpu"
    with pytest.raises(ConfigError, match="MMOS_DEVICE=cuda"):
        MultimodalModel.from_config(ModelConfig.tiny(), settings=Settings(cache_dir=tmp_path, device="cuda"))


def test_cuda_precision_reaches_the_backbones_autocast(tmp_path, monkeypatch) -> None:
    """With the probe faked to a GPU without bf16, an fp16 model asks its backbones for fp16 autocast."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    from mm_opensearch.towers import backbone_base

    monkeypatch.setattr(backbone_base.Backbone, "to", lambda self, device: self)  # nothing can move to a fake GPU
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    model = MultimodalModel.from_config(ModelConfig.tiny(), settings=Settings(cache_dir=tmp_path, device="auto"))
    assert model.device.type == "cuda"
    assert model.image_backbone.cuda_dtype is torch.float16 and model.text_backbone.cuda_dtype is torch.float16


def _jpeg(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize(size).save(buffer, format=fmt)
    return buffer.getvalue()


def test_only_jpegs_within_the_pixel_limit_go_to_the_gpu_decoder() -> None:
    settings = Settings(image_max_pixels=100_000)
    assert _gpu_decodable(_jpeg((300, 200)), settings)
    assert not _gpu_decodable(_jpeg((300, 200), "PNG"), settings)
    assert not _gpu_decodable(_jpeg((400, 300)), settings)  # over the limit: the CPU path refuses it by name
    assert not _gpu_decodable(_jpeg((300, 200))[:40], settings)


def test_without_a_gpu_decoder_images_decode_on_the_cpu_like_the_pil_path() -> None:
    assert not gpu_jpeg_decode_available() or torch.cuda.is_available()
    data = _jpeg((300, 200))
    batch = decode_resize([data, data], 224, device=torch.device("cpu"))
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.uint8
    reference = resize_crop(Image.open(io.BytesIO(data)), ImagePreprocess(resize=224, crop=224, mean=(0.5,) * 3,
                                                                           std=(0.5,) * 3, interpolation="bilinear"))
    assert (batch[0].float() - reference.float()).abs().mean() < 3.0  # resampling rounding only
