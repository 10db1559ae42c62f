"""Vectorised rasterisation for the miniature world: a supersampled canvas and texture banks.

Every primitive is rasterised inside its own bounding box with numpy masks built from pixel
centre coordinates, so no Python loop ever runs over pixels. A primitive writes three things
at once, which keeps the label and the image in agreement by construction: the class ID, the
surface colour and the depth (for fog and haze).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

SKY = 10
FAR = 1.0e4  # depth of the sky (metres)


class Canvas:
    """Class map, colour and depth at the supersampled resolution; optional emission layer."""

    def __init__(self, h: int, w: int, emissive: bool = False, thin_min: float = 0.0):
        self.h, self.w = h, w
        # Smallest size, in canvas pixels, of thin objects (poles, lights, signs); 0: no minimum.
        self.thin_min = float(thin_min)
        self.cls = np.full((h, w), SKY, dtype=np.uint8)
        self.depth = np.full((h, w), FAR, dtype=np.float32)
        self.rgb = np.zeros((h, w, 3), dtype=np.float32)
        self.emit = np.zeros((h, w, 3), dtype=np.float32) if emissive else None
        self.xc = np.arange(w, dtype=np.float32) + 0.5
        self.yc = np.arange(h, dtype=np.float32) + 0.5

    def box(self, x0: float, x1: float, y0: float, y1: float):
        """Integer bounds (r0, r1, c0, c1) of the pixels whose centres lie in [x0,x1) x [y0,y1)."""
        if not (x1 > x0 and y1 > y0) or not math.isfinite(x0 + x1 + y0 + y1):
            return None
        c0 = max(0, math.ceil(x0 - 0.5))
        c1 = min(self.w, math.ceil(x1 - 0.5))
        r0 = max(0, math.ceil(y0 - 0.5))
        r1 = min(self.h, math.ceil(y1 - 0.5))
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def grid(self, bb):
        r0, r1, c0, c1 = bb
        return self.yc[r0:r1, None], self.xc[None, c0:c1]

    def put(self, bb, mask, cls, color, depth, emit=None) -> None:
        """Write class, colour (RGB or per-pixel array) and depth where `mask` holds in `bb`."""
        r0, r1, c0, c1 = bb
        sl = (slice(r0, r1), slice(c0, c1))
        color = np.asarray(color, dtype=np.float32)
        if mask is None:
            self.cls[sl] = cls
            self.rgb[sl] = color
            self.depth[sl] = depth
            if emit is not None and self.emit is not None:
                self.emit[sl] = emit
            return
        m3 = mask[..., None]
        np.copyto(self.cls[sl], np.uint8(cls), where=mask)
        np.copyto(self.rgb[sl], color, where=m3)
        np.copyto(self.depth[sl], np.asarray(depth, dtype=np.float32), where=mask)
        if emit is not None and self.emit is not None:
            np.copyto(self.emit[sl], np.asarray(emit, dtype=np.float32), where=m3)

    # -- screen-space primitives -------------------------------------------------------------

    def rect(self, x0, x1, y0, y1, cls, color, depth, minw: float = 0.0, minh: float = 0.0, emit=None):
        if x1 - x0 < minw:
            c = 0.5 * (x0 + x1)
            x0, x1 = c - 0.5 * minw, c + 0.5 * minw
        if y1 - y0 < minh:
            c = 0.5 * (y0 + y1)
            y0, y1 = c - 0.5 * minh, c + 0.5 * minh
        bb = self.box(x0, x1, y0, y1)
        if bb is not None:
            self.put(bb, None, cls, color, depth, emit)
        return bb

    def ellipse(self, cx, cy, rx, ry, cls, color, depth, minr: float = 0.7, emit=None):
        rx, ry = max(rx, minr), max(ry, minr)
        bb = self.box(cx - rx, cx + rx, cy - ry, cy + ry)
        if bb is None:
            return None
        ys, xs = self.grid(bb)
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        self.put(bb, mask, cls, color, depth, emit)
        return bb

    def poly(self, pts, cls, color, depth, emit=None):
        """A convex polygon given as [(x, y), ...] in either orientation."""
        pts = np.asarray(pts, dtype=np.float64)
        bb = self.box(pts[:, 0].min(), pts[:, 0].max() + 1e-6, pts[:, 1].min(), pts[:, 1].max() + 1e-6)
        if bb is None:
            return None
        ys, xs = self.grid(bb)
        nxt = np.roll(pts, -1, axis=0)
        area = np.sum(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1])
        sign = 1.0 if area >= 0 else -1.0
        mask = np.ones((bb[1] - bb[0], bb[3] - bb[2]), dtype=bool)
        for (ax, ay), (bx, by) in zip(pts, nxt):
            mask &= sign * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) >= 0
        self.put(bb, mask, cls, color, depth, emit)
        return bb

    def thick_line(self, x0, y0, x1, y1, width, cls, color, depth):
        """A line segment drawn as a quad of the given width (at least ~1 pixel)."""
        width = max(width, 1.2)
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy)
        if n < 1e-6:
            return None
        nx, ny = -dy / n * width / 2, dx / n * width / 2
        return self.poly([(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)], cls, color, depth)


# -- texture banks ------------------------------------------------------------------------------
# Built once per process from a fixed seed (they are material, like a game's texture files);
# every image then takes crops at offsets drawn from its own RNG, so output stays a pure
# function of (seed, domain, split, index).

BANK = 512


def _smooth(rng: np.random.Generator, cells: int) -> np.ndarray:
    low = rng.standard_normal((cells, cells)).astype(np.float32)
    # Tile 3x3 and crop the middle so the upsampled field wraps around smoothly.
    big = np.tile(low, (3, 3))
    img = Image.fromarray(big, mode="F").resize((3 * BANK, 3 * BANK), Image.BICUBIC)
    out = np.asarray(img)[BANK : 2 * BANK, BANK : 2 * BANK]
    return (out - out.mean()) / (out.std() + 1e-6)


@lru_cache(maxsize=4)
def banks(salt: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0x6D696E69 + salt)
    fine = rng.standard_normal((BANK, BANK)).astype(np.float32)
    mid = _smooth(rng, BANK // 4)
    coarse = _smooth(rng, BANK // 32)
    blobs = _smooth(rng, BANK // 12)
    # Rain: sparse drops drawn out into slanted streaks.
    drops = (rng.random((BANK, BANK)) < 0.0035).astype(np.float32) * rng.uniform(0.4, 1.0, (BANK, BANK)).astype(np.float32)
    rain = np.zeros_like(drops)
    for k in range(14):
        rain += np.roll(np.roll(drops, 2 * k, axis=0), k // 4, axis=1) * (1.0 - k / 16)
    rain = np.clip(rain, 0, 1)
    # Snow: round flakes of a few sizes.
    flakes = (rng.random((BANK, BANK)) < 0.004).astype(np.float32)
    snow = flakes.copy()
    big = (rng.random((BANK, BANK)) < 0.0015).astype(np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            snow = np.maximum(snow, np.roll(np.roll(big, dy, 0), dx, 1) * (0.6 if dx and dy else 1.0))
    return {
        "fine": fine,
        "mid": mid,
        "coarse": coarse,
        "blobs": blobs,
        "rain": rain,
        "snow": snow,
    }


def crop(bank: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w) window of a texture bank at a random offset (tiled if the image is larger)."""
    bh, bw = bank.shape
    if h > bh or w > bw:
        bank = np.tile(bank, (h // bh + 1, w // bw + 1))
        bh, bw = bank.shape
    r = int(rng.integers(0, bh - h + 1))
    c = int(rng.integers(0, bw - w + 1))
    return bank[r : r + h, c : c + w]


def hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer pair (e.g. a window index)."""
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    h = (a * 73856093) ^ (b * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h >> 7) & 1023).astype(np.float32) / 1024.0
