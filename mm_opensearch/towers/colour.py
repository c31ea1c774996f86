"""A colour and pattern descriptor of the product in a catalog photo, computed from its pixels.

ImageNet-pooled CNN features keep colour poorly: a linear probe on EfficientNet-Lite0's pooled
vector names Myntra's base colour for about half the products, where the text names it for nearly
all (docs/quality.md). Where the text is silent about colour, the picture must say it. This
descriptor says it explicitly and cheaply (a few ms per batch on a CPU):

- **Colour histograms in CIELAB**, by the names shoppers use: neutrals by lightness (black ...
  white), chromatic pixels by hue sector x chroma (muted, vivid) x lightness (dark, mid, light),
  hue softly split between neighbouring sectors. One histogram of the whole product
  (centre-weighted), one of its core (the central box: less skin, hair and props). Square roots
  (Hellinger), so a linear layer compares them fairly.
- **The background taken out**: catalog photos stand on a flat studio backdrop. Its colour is the
  median of the border pixels; a pixel counts as product by its CIELAB distance to it, with a small
  floor so that a white shirt on white still has a histogram.
- **Pattern cues**: mean gradient energy inside the product (its outline eroded away) at two scales and a magnitude-weighted
  histogram of gradient orientations (stripes and checks have peaks; solids have little energy).
- Mean and spread of the product's L, a, b, and the product's share of the frame.

Deterministic (pure tensor arithmetic on the uint8 crop) and versioned: the version is part of the
image backbone's id, so features and models made with another descriptor never share a cache.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

__all__ = ["COLOUR_DIM", "COLOUR_VERSION", "colour_descriptor", "product_weights", "rgb_to_lab"]

COLOUR_VERSION = "lab-hist-v1"

_NEUTRAL_L = 5  # black, dark grey, grey, light grey, white
_HUES = 12
_CHROMAS = 2  # muted, vivid
_LIGHTS = 3  # dark, mid, light
_NEUTRAL_CHROMA = 8.0  # CIELAB chroma below which a pixel has no hue worth naming
_VIVID_CHROMA = 28.0
_ORIENTATIONS = 8
_BINS = _NEUTRAL_L + _HUES * _CHROMAS * _LIGHTS  # 77
COLOUR_DIM = 2 * _BINS + 6 + 1 + 2 + _ORIENTATIONS  # 171

_SIDE = 112  # descriptor resolution: enough for colour and coarse pattern, cheap on a CPU
_FOREGROUND_DELTA = (6.0, 16.0)  # CIELAB distance to the backdrop: 0 below, 1 above, linear between
_BACKGROUND_FLOOR = 0.05


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (n, 3, h, w) -> CIELAB (D65), (n, 3, h, w): L in [0, 100], a and b about [-110, 110]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
        dtype=rgb.dtype, device=rgb.device,
    )
    xyz = torch.einsum("ij,njhw->nihw", matrix, linear)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    t = xyz / white
    delta = 6 / 29
    f = torch.where(t > delta**3, t.clamp(min=1e-12) ** (1 / 3), t / (3 * delta**2) + 4 / 29)
    lightness = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lightness, a, b], dim=1)


def _centre_weights(side: int, device: torch.device) -> torch.Tensor:
    """Gaussian centre weighting (sigma = 0.35 of the side): products are framed in the middle."""
    axis = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side - 0.5
    g = torch.exp(-(axis**2) / (2 * 0.35**2))
    return g[:, None] * g[None, :]


def _core_box(side: int, device: torch.device) -> torch.Tensor:
    box = torch.zeros(side, side, device=device)
    lo, hi = side // 4, side - side // 4
    box[lo:hi, lo:hi] = 1.0
    return box


def _foreground(lab: torch.Tensor) -> torch.Tensor:
    """(n, h, w) in [floor, 1]: how surely each pixel is product rather than the studio backdrop."""
    border = torch.cat([lab[:, :, :2, :].flatten(2), lab[:, :, -2:, :].flatten(2),
                        lab[:, :, :, :2].flatten(2), lab[:, :, :, -2:].flatten(2)], dim=2)
    backdrop = border.median(dim=2).values[:, :, None, None]
    distance = (lab - backdrop).norm(dim=1)
    lo, hi = _FOREGROUND_DELTA
    return ((distance - lo) / (hi - lo)).clamp(0.0, 1.0).clamp(min=_BACKGROUND_FLOOR)


def _bin_weights(lab: torch.Tensor) -> torch.Tensor:
    """(n, bins, h, w) soft assignment of each pixel to the colour bins (sums to 1 per pixel)."""
    lightness, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    chroma = torch.sqrt(a * a + b * b)
    n, h, w = lightness.shape
    out = torch.zeros(n, _BINS, h, w, dtype=lab.dtype, device=lab.device)
    neutral = (chroma < _NEUTRAL_CHROMA).to(lab.dtype)
    # Neutrals: lightness split softly between the five levels.
    level = (lightness / 100 * (_NEUTRAL_L - 1)).clamp(0, _NEUTRAL_L - 1)
    low = level.floor().long().clamp(max=_NEUTRAL_L - 2)
    frac = level - low
    out.scatter_add_(1, low[:, None], (neutral * (1 - frac))[:, None])
    out.scatter_add_(1, (low + 1)[:, None], (neutral * frac)[:, None])
    # Chromatic: hue sector (soft, circular) x chroma level x lightness level (hard).
    hue = (torch.atan2(b, a) % (2 * math.pi)) / (2 * math.pi) * _HUES
    first = hue.floor().long() % _HUES
    share = hue - hue.floor()
    vivid = (chroma >= _VIVID_CHROMA).long()
    light = torch.bucketize(lightness.contiguous(), torch.tensor([40.0, 70.0], device=lab.device))
    chromatic = 1 - neutral
    for sector, weight in ((first, 1 - share), ((first + 1) % _HUES, share)):
        index = _NEUTRAL_L + (sector * _CHROMAS + vivid) * _LIGHTS + light
        out.scatter_add_(1, index[:, None], (chromatic * weight)[:, None])
    return out


def _histogram(bins: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted, normalised histogram (n, bins), square-rooted."""
    hist = (bins * weights[:, None]).sum(dim=(2, 3))
    return torch.sqrt(hist / hist.sum(dim=1, keepdim=True).clamp(min=1e-8))


def _gradients(lightness: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean gradient magnitude (L units per pixel / 10) and orientation histogram (mod pi, soft) under ``weights``."""
    gx = lightness[:, 1:-1, 2:] - lightness[:, 1:-1, :-2]
    gy = lightness[:, 2:, 1:-1] - lightness[:, :-2, 1:-1]
    w = weights[:, 1:-1, 1:-1]
    magnitude = torch.sqrt(gx * gx + gy * gy)
    total = w.sum(dim=(1, 2)).clamp(min=1e-8)
    energy = (magnitude * w).sum(dim=(1, 2)) / total / 10
    angle = (torch.atan2(gy, gx) % math.pi) / math.pi * _ORIENTATIONS
    first = angle.floor().long() % _ORIENTATIONS
    share = angle - angle.floor()
    hist = torch.zeros(lightness.shape[0], _ORIENTATIONS, device=lightness.device, dtype=lightness.dtype)
    mass = (magnitude * w).flatten(1)
    hist.scatter_add_(1, first.flatten(1), mass * (1 - share).flatten(1))
    hist.scatter_add_(1, ((first + 1) % _ORIENTATIONS).flatten(1), mass * share.flatten(1))
    return energy, torch.sqrt(hist / hist.sum(dim=1, keepdim=True).clamp(min=1e-8))


def _lab(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, h, w) RGB -> CIELAB at the descriptor's resolution."""
    rgb = batch.float() / 255.0
    if rgb.shape[-1] != _SIDE or rgb.shape[-2] != _SIDE:
        rgb = functional.interpolate(rgb, size=(_SIDE, _SIDE), mode="bilinear", antialias=True, align_corners=False)
    return rgb_to_lab(rgb.clamp(0.0, 1.0))


def product_weights(batch: torch.Tensor) -> torch.Tensor:
    """(n, 112, 112) centre-weighted product mask of a uint8 RGB batch: where the product is, not the backdrop."""
    return _foreground(_lab(batch)) * _centre_weights(_SIDE, batch.device)


def colour_descriptor(batch: torch.Tensor) -> torch.Tensor:
    """(n, COLOUR_DIM) float32 descriptor of a uint8 (n, 3, h, w) RGB batch (the backbone's crop)."""
    lab = _lab(batch)
    product = _foreground(lab)
    centre = _centre_weights(_SIDE, lab.device)
    whole = product * centre
    core = product * _core_box(_SIDE, lab.device)
    bins = _bin_weights(lab)
    total = whole.sum(dim=(1, 2), keepdim=True).clamp(min=1e-8)
    mean = (lab * whole[:, None]).sum(dim=(2, 3)) / total.view(-1, 1)
    spread = torch.sqrt(((lab - mean[:, :, None, None]) ** 2 * whole[:, None]).sum(dim=(2, 3)) / total.view(-1, 1))
    share = (product > 0.5).float().mean(dim=(1, 2))
    # Pattern is measured inside the product: its outline against the backdrop is shape, not pattern.
    interior = -functional.max_pool2d(-product[:, None], 9, stride=1, padding=4)[:, 0] * centre
    fine_energy, orientations = _gradients(lab[:, 0], interior)
    coarse = functional.avg_pool2d(lab[:, :1], 2)[:, 0]
    coarse_energy, _ = _gradients(coarse, functional.avg_pool2d(interior[:, None], 2)[:, 0])
    return torch.cat([
        _histogram(bins, whole),
        _histogram(bins, core),
        mean / 50.0,  # L, a, b to about unit scale
        spread / 25.0,
        share[:, None],
        fine_energy[:, None],
        coarse_energy[:, None],
        orientations,
    ], dim=1).float()
