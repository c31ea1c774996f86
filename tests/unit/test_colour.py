"""The colour and pattern descriptor: what it says of fixed images, and how it joins the image backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.towers import ModelConfig, MultimodalModel, ProductInput
from mm_opensearch.towers.backbones import build_image_backbone
from mm_opensearch.towers.colour import COLOUR_DIM, colour_descriptor, rgb_to_lab
from mm_opensearch.towers.config import ImageBackboneSpec
from mm_opensearch.towers.onnx_product import FLOAT_MIN_COSINE

HIST = slice(0, 77)  # the whole-product histogram


def _photo(garment: tuple[int, int, int], backdrop: tuple[int, int, int] = (250, 250, 250), *,
           stripes: bool = False, side: int = 224) -> torch.Tensor:
    """A catalog-like photo: a garment rectangle in the middle of a flat backdrop."""
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[:] = backdrop
    lo, hi = side // 5, side - side // 5
    image[lo:hi, lo + 10 : hi - 10] = garment
    if stripes:
        for row in range(lo, hi, 12):
            image[row : row + 6, lo + 10 : hi - 10] = (20, 20, 20)
    return torch.from_numpy(image).permute(2, 0, 1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_cielab_of_reference_colours() -> None:
    lab = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1))
    white, red, black = lab[0, :, :, 0].T
    assert torch.allclose(white, torch.tensor([100.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(red, torch.tensor([53.24, 80.09, 67.20]), atol=0.05)
    assert torch.allclose(black, torch.zeros(3), atol=0.01)


def test_the_descriptor_is_deterministic_finite_and_of_its_declared_size() -> None:
    batch = torch.stack([_photo((200, 30, 30)), _photo((30, 30, 160), stripes=True), _photo((250, 250, 250))])
    first, second = colour_descriptor(batch), colour_descriptor(batch.clone())
    assert first.shape == (3, COLOUR_DIM) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert torch.equal(colour_descriptor(batch[1:2]), first[1:2])  # a row does not depend on its batch


def test_colours_land_in_different_bins_and_the_backdrop_is_taken_out() -> None:
    red, navy, red_on_grey = colour_descriptor(torch.stack([
        _photo((200, 30, 30)), _photo((20, 30, 90)), _photo((200, 30, 30), backdrop=(190, 190, 190)),
    ]))
    assert int(red[HIST].argmax()) != int(navy[HIST].argmax())
    assert _cosine(red[HIST], navy[HIST]) < 0.2
    # The same garment on another studio backdrop reads as the same colour.
    assert _cosine(red[HIST], red_on_grey[HIST]) > 0.95


def test_a_white_garment_on_white_still_has_a_histogram() -> None:
    white = colour_descriptor(_photo((255, 255, 255))[None])[0]
    assert float(white[HIST].max()) > 0.9  # nearly all mass in the white bin, nothing NaN


def test_stripes_carry_more_gradient_energy_than_a_solid() -> None:
    solid, striped = colour_descriptor(torch.stack([_photo((30, 30, 160)), _photo((30, 30, 160), stripes=True)]))
    energy = slice(2 * 77 + 7, 2 * 77 + 9)
    assert (striped[energy] > 2 * solid[energy]).all()


def test_the_backbone_id_and_width_change_with_the_descriptor() -> None:
    plain = build_image_backbone(ImageBackboneSpec(name="tiny-image", token_grid=2))
    coloured = build_image_backbone(ImageBackboneSpec(name="tiny-image", token_grid=2, colour_descriptor=True))
    assert plain.backbone_id != coloured.backbone_id  # cached features of one are never read for the other
    assert coloured.dim == plain.dim + COLOUR_DIM and coloured.token_dim == plain.dim
    features = coloured.features(torch.stack([_photo((200, 30, 30), side=32)]))
    assert features.pooled.shape == (1, plain.dim + COLOUR_DIM) and features.tokens.shape == (1, 4, plain.dim)


def test_a_backbone_without_a_feature_map_refuses_the_descriptor_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="colour_descriptor"):
        build_image_backbone(ImageBackboneSpec(name=str(tmp_path), colour_descriptor=True))


@pytest.fixture
def catalog(tmp_path: Path) -> list[ProductInput]:
    products = []
    for j, colour in enumerate([(200, 30, 30), (30, 30, 160), (240, 240, 240), (30, 140, 40)]):
        path = tmp_path / f"p{j}.jpg"
        Image.fromarray(_photo(colour, side=48).permute(1, 2, 0).numpy()).save(path, quality=95)
        products.append(ProductInput(f"p{j}", f"cotton shirt {j}", str(path)))
    return products


def _model(tmp_path: Path, **settings: object) -> MultimodalModel:
    config = ModelConfig.tiny(image_backbone=ImageBackboneSpec(name="tiny-image", token_grid=2, colour_descriptor=True),
                              fusion="cross_attention")
    return MultimodalModel.from_config(config, settings=Settings(cache_dir=tmp_path / "cache", **settings),
                                       device="cpu")


def test_products_encode_through_the_feature_cache_and_onnx_with_the_descriptor(tmp_path, catalog) -> None:
    model = _model(tmp_path)
    assert model.model_id != MultimodalModel.from_config(ModelConfig.tiny(fusion="cross_attention"), device="cpu",
                                                         use_feature_cache=False).model_id
    first = model.encode_products(catalog, image_roots=[tmp_path], with_modalities=True)
    again = _model(tmp_path).encode_products(catalog, image_roots=[tmp_path], with_modalities=True)  # from the cache
    assert first.has_image.all()
    np.testing.assert_allclose(again.fused, first.fused, atol=2e-3)  # the cache stores float16
    onnx = _model(tmp_path, product_runtime="onnx")
    assert onnx.product_tower().runtime == "onnx"
    out = onnx.encode_products(catalog, image_roots=[tmp_path], with_modalities=True)
    cosines = (out.image * first.image).sum(1) / np.linalg.norm(out.image, axis=1) / np.linalg.norm(first.image, axis=1)
    assert cosines.min() >= FLOAT_MIN_COSINE


def test_the_cnn_and_the_descriptor_are_cached_apart_so_turning_it_on_reuses_cnn_features(tmp_path, catalog) -> None:
    settings = Settings(cache_dir=tmp_path / "cache")
    plain = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings, device="cpu")
    plain.encode_products(catalog, image_roots=[tmp_path])
    coloured = MultimodalModel.from_config(
        ModelConfig.tiny(image_backbone=ImageBackboneSpec(name="tiny-image", token_grid=2, colour_descriptor=True)),
        settings=settings, device="cpu")
    calls: list[int] = []
    network = coloured.image_backbone.module()
    network.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    features = coloured.image_features([p.image for p in catalog], image_roots=[tmp_path])
    assert calls == []  # every CNN feature came from the plain model's cache
    assert features.pooled.shape == (len(catalog), 16 + COLOUR_DIM) and features.ok.all()
    stored = sorted(p.name for p in (tmp_path / "cache" / "features").iterdir())
    assert coloured.image_backbone.backbone_id not in stored  # no third, combined copy
    assert plain.image_backbone.backbone_id in stored and any(name.startswith("colour") for name in stored)
