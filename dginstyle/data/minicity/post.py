"""Output-resolution image pipeline: textures, weather, night lighting, camera and art looks.

Runs after the supersampled canvas is box-filtered to the output size. Nothing here changes
the label: weather, light and lens effects alter colours only, as in real photographs.
"""

from __future__ import annotations

import math

import numpy as np

from .raster import banks, crop
from .scene import (BIKE, BUILDING, CAR, FENCE, IGN, MOTO, PERSON, POLE, RIDER, ROAD, SIDEWALK, SKY,
                    TERRAIN, TRAIN, TRUCK, BUS, VEG, WALL, TLIGHT, TSIGN)

# Texture amplitude per class: (fine grain, mid-scale blotches).
TEX = np.zeros((256, 2), np.float32)
for _c, (_f, _m) in {
    ROAD: (0.35, 0.45), SIDEWALK: (0.4, 0.4), BUILDING: (0.25, 0.45), WALL: (0.4, 0.5), FENCE: (0.2, 0.2),
    POLE: (0.15, 0.15), VEG: (1.1, 1.2), TERRAIN: (0.9, 1.0), SKY: (0.0, 0.0), CAR: (0.12, 0.15),
    TRUCK: (0.15, 0.2), BUS: (0.12, 0.15), TRAIN: (0.12, 0.15), PERSON: (0.25, 0.2), RIDER: (0.25, 0.2),
    IGN: (0.6, 0.6), TLIGHT: (0.1, 0.1), TSIGN: (0.1, 0.1), MOTO: (0.15, 0.1), BIKE: (0.15, 0.1),
}.items():
    TEX[_c] = (_f, _m)

# How much each class catches snow.
SNOW_COVER = np.zeros(256, np.float32)
for _c, _v in {ROAD: 0.45, SIDEWALK: 0.85, TERRAIN: 1.0, VEG: 0.45, BUILDING: 0.08, WALL: 0.3, FENCE: 0.2,
               CAR: 0.25, TRUCK: 0.2, BUS: 0.15, IGN: 0.7}.items():
    SNOW_COVER[_c] = _v

GROUND = np.zeros(256, bool)
GROUND[[ROAD, SIDEWALK]] = True


def gblur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W[, C]) float image, edges replicated."""
    if sigma <= 0.05:
        return img
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    pad = [(r, r), (0, 0)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, pad, mode="edge")
    out = sum(k[i] * p[i : i + img.shape[0]] for i in range(2 * r + 1))
    pad = [(0, 0), (r, r)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(out, pad, mode="edge")
    return sum(k[i] * p[:, i : i + img.shape[1]] for i in range(2 * r + 1)).astype(np.float32)


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)


def _gauss_add(target: np.ndarray, x: float, y: float, rx: float, ry: float, color) -> None:
    """Add an elliptical Gaussian blob (colour-weighted) to an (H, W, 3) image in place."""
    h, w = target.shape[:2]
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    c0, c1 = max(0, int(x - 2.5 * rx)), min(w, int(x + 2.5 * rx) + 1)
    r0, r1 = max(0, int(y - 2.5 * ry)), min(h, int(y + 2.5 * ry) + 1)
    if c0 >= c1 or r0 >= r1:
        return
    yg = (np.arange(r0, r1, dtype=np.float32) + 0.5)[:, None]
    xg = (np.arange(c0, c1, dtype=np.float32) + 0.5)[None, :]
    g = np.exp(-0.5 * (((xg - x) / rx) ** 2 + ((yg - y) / ry) ** 2))
    target[r0:r1, c0:c1] += g[..., None] * np.asarray(color, np.float32)


def _half(a: np.ndarray) -> np.ndarray:
    """2x2 box-filter downsampling (the antialiasing step of the supersampled render)."""
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * np.float32(0.25)


def _edges(label: np.ndarray) -> np.ndarray:
    e = np.zeros(label.shape, bool)
    e[:, 1:] |= label[:, 1:] != label[:, :-1]
    e[1:, :] |= label[1:, :] != label[:-1, :]
    return e


def finish(cv, sc, st, lights: list, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled canvas -> (uint8 RGB image, uint8 label) at half the canvas size."""
    H, W = cv.h // 2, cv.w // 2
    rgb = _half(cv.rgb)
    label = np.ascontiguousarray(cv.cls[::2, ::2])
    depth = cv.depth[::2, ::2]
    B = banks(st.tex_salt)
    p = st.p

    # Surface texture.
    fine = crop(B["fine"], H, W, rng)
    mid = crop(B["mid"], H, W, rng)
    tex = TEX[label]
    rgb *= (1.0 + p["tex"] * (tex[..., 0] * fine + tex[..., 1] * mid))[..., None]
    sky = label == SKY
    if p["clouds"] > 0 and not p["night"]:
        coarse = crop(B["coarse"], H, W, rng)
        c = np.clip((0.5 + 0.3 * coarse - (1.0 - p["clouds"])) * 2.5, 0, 1) * sky
        rgb += (st.palette["cloud"][0] - rgb) * c[..., None] * 0.85

    if p["snow"] > 0:
        blobs = crop(B["blobs"], H, W, rng)
        cover = np.clip(SNOW_COVER[label] * p["snow"] * 1.3 + 0.25 * blobs + 0.1 * fine - 0.2, 0, 1)
        snow_col = np.asarray([0.90, 0.92, 0.96], np.float32)
        rgb += (snow_col - rgb) * cover[..., None]
    if p["wet"] > 0:
        ground = GROUND[label]
        rgb[ground] *= 1.0 - 0.35 * p["wet"]
        yh = sc.cam.yh / 2
        rows = np.clip((2 * yh - np.arange(H)).astype(int), 0, H - 1)
        mirror = rgb[rows]
        rgb[ground] += 0.3 * p["wet"] * mirror[ground]

    night = p["night"] > 0 or st.condition == "dusk"
    if night:
        amb = p["ambient"]
        light = np.full((H, W, 3), amb, np.float32)
        glow = np.zeros((H, W, 3), np.float32)
        cam = sc.cam
        lamp = st.palette["lamp"][0]
        for kind, X, Y, Z in lights:
            if Z < 1.5:
                continue
            k = cam.f / Z / 2
            x = cam.sx(X, Z) / 2
            if kind == "lamp":
                yg = cam.sy(0.0, Z) / 2
                _gauss_add(light, x, yg, 4.5 * k, 4.5 * k * cam.hcam / Z * 1.4 + 0.5, lamp * p["lights"] * 0.85)
                _gauss_add(glow, x, cam.sy(Y, Z) / 2, 0.8 * k + 0.6, 0.8 * k + 0.6, lamp * p["lights"] * 0.5)
            elif kind == "head":
                _gauss_add(glow, x, cam.sy(Y, Z) / 2, 0.25 * k + 0.4, 0.2 * k + 0.4, np.asarray([1.0, 0.95, 0.85]) * p["lights"] * 0.3)
                zg = max(Z - 6.0, 2.0)
                _gauss_add(light, cam.sx(X, zg) / 2, cam.sy(0.0, zg) / 2, 1.2 * cam.f / zg / 2, 1.2 * cam.f / zg / 2 * 0.3, np.asarray([0.3, 0.3, 0.27]) * p["lights"])
            else:
                _gauss_add(glow, x, cam.sy(Y, Z) / 2, 0.35 * k + 0.4, 0.3 * k + 0.4, np.asarray([0.8, 0.05, 0.02]) * p["lights"] * 0.5)
        rgb = rgb * np.minimum(light, 1.6)
        if cv.emit is not None:
            emit = _half(cv.emit)
            glow += emit + gblur(emit, 1.2) * 0.5
        if not p["night"]:
            sky_col = rgb[sky]
            rgb[sky] = sky_col / np.maximum(amb, 1e-3) * 0.9  # dusk sky stays bright
        rgb += glow

    dens = p["haze"] + p["fog"]
    if dens > 0:
        t = np.exp(-dens * np.minimum(depth, 1e3))[..., None]
        hc = np.asarray(p["haze_color"], np.float32)
        if p["night"]:
            hc = hc * max(p["ambient"], 0.05) * 1.5
        rgb = rgb * t + hc * (1 - t)
    if p["rain"] > 0:
        streaks = crop(B["rain"], H, W, rng)
        a = np.clip(streaks * p["rain"] * 0.55, 0, 1)[..., None]
        rgb = rgb * (1 - a) + (np.asarray([0.78, 0.8, 0.84], np.float32) * (0.4 if p["night"] else 1.0)) * a
        rgb = gblur(rgb, 0.4 * p["rain"])
    if p["flakes"] > 0:
        fl = crop(B["snow"], H, W, rng)
        a = np.clip(fl * p["flakes"], 0, 1)[..., None]
        rgb = rgb * (1 - a) + 0.95 * a

    # Camera: exposure, colour temperature, cast, saturation, contrast, gamma.
    temp = p["temperature"]
    gain = np.asarray([1 + 0.12 * temp, 1.0, 1 - 0.15 * temp], np.float32) * p["exposure"]
    if p["cast"] > 0:
        gain = gain * (1 + rng.uniform(-p["cast"], p["cast"], 3)).astype(np.float32)
    rgb = rgb * gain
    lum = _lum(rgb)[..., None]
    rgb = lum + (rgb - lum) * p["saturation"]
    m = float(lum.mean())
    rgb = m + (rgb - m) * p["contrast"]
    if p["gamma"] != 1.0:
        rgb = np.clip(rgb, 0, None) ** p["gamma"]
    rgb = gblur(rgb, p["blur"])
    if p["vignette"] > 0:
        yy = (np.arange(H, dtype=np.float32)[:, None] + 0.5) / H - 0.5
        xx = (np.arange(W, dtype=np.float32)[None, :] + 0.5) / W - 0.5
        rgb *= (1 - p["vignette"] * 2.0 * (xx**2 + yy**2))[..., None]
    if p["noise"] > 0:
        nz = crop(B["fine"], H, W * 3, rng).reshape(H, W, 3)
        rgb += p["noise"] * (0.7 * nz + 0.3 * nz.mean(axis=2, keepdims=True))

    art = p["art"]
    if art != "none":
        rgb = _art(rgb, label, art, B, rng)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), label


def _art(rgb, label, art, B, rng):
    H, W = label.shape
    if art == "painting":
        rgb = gblur(rgb, 0.9)
        levels = 7
        rgb = np.round(rgb * levels) / levels
        brush = crop(B["mid"], H, W, rng)
        return rgb * (1 + 0.06 * brush)[..., None]
    if art == "watercolor":
        rgb = gblur(rgb, 1.1)
        lum = _lum(rgb)[..., None]
        rgb = lum + (rgb - lum) * 0.8
        rgb = 0.65 * rgb + 0.35 * np.asarray([0.98, 0.96, 0.92], np.float32)
        rgb[_edges(label)] *= 0.82
        return rgb * (1 + 0.05 * crop(B["coarse"], H, W, rng))[..., None]
    if art == "sketch":
        g = gblur(_lum(rgb), 0.6)
        gy, gx = np.gradient(g)
        e = np.sqrt(gx**2 + gy**2)
        yy, xx = np.mgrid[0:H, 0:W]
        hatch = (np.mod(xx + yy, 4) == 0) & (g < 0.45)
        out = 0.95 - 3.0 * e - 0.25 * hatch - 0.15 * (g < 0.25)
        return np.clip(out, 0, 1)[..., None] * np.asarray([1.0, 0.98, 0.93], np.float32)
    if art == "cartoon":
        rgb = gblur(rgb, 0.7)
        lum = _lum(rgb)[..., None]
        rgb = lum + (rgb - lum) * 1.2
        lo, hi = np.percentile(rgb, (2, 98))
        rgb = (rgb - lo) / max(hi - lo, 0.05)
        rgb = np.round(rgb * 5) / 5 * 0.85 + 0.1
        rgb[_edges(label)] = 0.05
        return rgb
    if art == "vintage":
        lo, hi = np.percentile(rgb, (2, 98))
        rgb = (rgb - lo) / max(hi - lo, 0.05)
        lum = _lum(rgb)
        sep = np.stack([lum * 1.07 + 0.05, lum * 0.9 + 0.04, lum * 0.68 + 0.02], axis=-1)
        rgb = 0.8 * sep + 0.2 * rgb
        rgb = 0.1 + rgb * 0.8
        yy = (np.arange(H, dtype=np.float32)[:, None] + 0.5) / H - 0.5
        xx = (np.arange(W, dtype=np.float32)[None, :] + 0.5) / W - 0.5
        rgb *= (1 - 1.3 * (xx**2 + yy**2))[..., None]
        return rgb + 0.04 * crop(B["fine"], H, W, rng)[..., None]
    if art == "bw":
        lum = _lum(rgb)
        lum = 0.5 + (lum - lum.mean()) * 1.2
        return np.repeat(lum[..., None], 3, axis=2)
    return rgb
