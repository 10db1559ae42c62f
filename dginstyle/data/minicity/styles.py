"""Per-domain looks of the miniature world, and the broad style distribution of the prior corpus.

Every domain renders the same layout generator; what differs is its *style*: surface colours
per class, lighting (sun strength, cast shadows, night lights), weather overlays and the
camera/sensor pipeline (haze, blur, noise, vignetting, colour cast, exposure). A domain's style
is a distribution written as data (`DOMAIN_SPECS`): a fixed palette with small per-scene
jitter plus parameters that are fixed numbers, [lo, hi] ranges or {"choice", "p"} picks, and
optional per-image *conditions* (ACDC's fog/rain/snow/night, BDD's dusk) that override them.
The spec is what the manifest records.

The prior corpus and the targets
--------------------------------
DGInStyle relies on Stable Diffusion having seen a vast number of photos of streets in all
weathers, and on the *target* datasets not being among what it is evaluated against. The
`prior` domain plays that role here. It draws every image's palette, lighting, weather and
camera pipeline from broad random distributions (`sample_prior_style`): per-class colours from
wide hue/saturation/value ranges around what such surfaces look like in the world, a sun of
any strength, fog of any density, rain, snow, night with street lights of any colour, colour
casts, exposure, blur and noise of any amount, and artistic renderings (painting, watercolour,
sketch, cartoon, vintage and black-and-white photos). The targets' looks therefore lie inside
the span of the prior, but none of the targets' fixed palettes, haze colours, vignettes or
condition mixtures is ever used for the prior: those numbers exist only in `DOMAIN_SPECS`,
which `sample_prior_style` never reads. The prior also uses a differently seeded texture bank
and its own camera distribution. This mirrors SD having seen many photos, but not these
datasets. The `game` look (saturated flat shading with hard sun) is deliberately absent from
the prior, so the model cannot simply learn to reproduce the source domain from its prior.
"""

from __future__ import annotations

import colorsys
import copy
from dataclasses import dataclass, field

import numpy as np

WEATHERS = ("sunny", "foggy", "rainy", "snowy", "night")

# Neutral real-world surface colours (sRGB 0..1); domains override what they change.
BASE_PALETTE: dict[str, list[list[float]]] = {
    "road": [[0.40, 0.40, 0.41]],
    "lane": [[0.85, 0.85, 0.82]],
    "lane2": [[0.85, 0.72, 0.30]],
    "sidewalk": [[0.58, 0.56, 0.53]],
    "building": [[0.62, 0.58, 0.52], [0.55, 0.52, 0.50], [0.70, 0.64, 0.55], [0.58, 0.44, 0.36], [0.72, 0.70, 0.66], [0.45, 0.44, 0.45]],
    "window": [[0.22, 0.26, 0.30]],
    "window_lit": [[1.0, 0.82, 0.52]],
    "wall": [[0.60, 0.57, 0.52]],
    "fence": [[0.42, 0.42, 0.42]],
    "pole": [[0.38, 0.39, 0.40]],
    "tl_box": [[0.16, 0.17, 0.16]],
    "sign": [[0.80, 0.18, 0.15], [0.15, 0.32, 0.70], [0.92, 0.80, 0.20], [0.90, 0.90, 0.90]],
    "vegetation": [[0.30, 0.40, 0.20], [0.24, 0.34, 0.16], [0.36, 0.44, 0.24]],
    "trunk": [[0.30, 0.24, 0.18]],
    "terrain": [[0.46, 0.50, 0.30], [0.50, 0.46, 0.34]],
    "sky_top": [[0.55, 0.68, 0.85]],
    "sky_bottom": [[0.82, 0.86, 0.90]],
    "cloud": [[0.92, 0.93, 0.95]],
    "skin": [[0.85, 0.66, 0.52], [0.62, 0.44, 0.32], [0.42, 0.30, 0.22], [0.92, 0.76, 0.64]],
    "cloth": [[0.15, 0.15, 0.18], [0.30, 0.32, 0.40], [0.55, 0.52, 0.48], [0.60, 0.20, 0.18], [0.20, 0.30, 0.50], [0.80, 0.78, 0.75], [0.35, 0.40, 0.28]],
    "car": [[0.75, 0.76, 0.78], [0.12, 0.12, 0.14], [0.50, 0.52, 0.55], [0.85, 0.85, 0.86], [0.25, 0.30, 0.45], [0.55, 0.14, 0.12], [0.35, 0.36, 0.38]],
    "truck": [[0.85, 0.85, 0.84], [0.55, 0.56, 0.58], [0.30, 0.35, 0.50], [0.70, 0.25, 0.15]],
    "bus": [[0.85, 0.85, 0.82], [0.20, 0.40, 0.70], [0.80, 0.30, 0.15], [0.30, 0.55, 0.35]],
    "train": [[0.85, 0.86, 0.88], [0.20, 0.45, 0.80], [0.75, 0.15, 0.12]],
    "bike": [[0.15, 0.15, 0.15], [0.60, 0.15, 0.12], [0.20, 0.30, 0.55], [0.75, 0.75, 0.75]],
    "moto": [[0.10, 0.10, 0.12], [0.70, 0.12, 0.10], [0.80, 0.80, 0.80], [0.20, 0.25, 0.45]],
    "tyre": [[0.07, 0.07, 0.08]],
    "glass": [[0.16, 0.20, 0.24]],
    "clutter": [[0.30, 0.35, 0.30], [0.45, 0.40, 0.32], [0.25, 0.25, 0.28]],
    "hood": [[0.14, 0.15, 0.17]],
    "rail": [[0.55, 0.55, 0.58]],
    "gravel": [[0.42, 0.39, 0.36]],
    "lamp": [[1.0, 0.75, 0.40]],
    "headlight": [[1.0, 0.97, 0.88]],
    "taillight": [[0.95, 0.08, 0.06]],
}

DEFAULT_PARAMS: dict = {
    "sun": 0.3,  # direct sunlight strength (face shading, cast shadows)
    "shadow_p": 0.5,  # chance that buildings cast hard shadows on the street
    "tex": 0.08,  # surface texture amplitude
    "window_contrast": 1.0,
    "exposure": 1.0,
    "contrast": 1.0,
    "saturation": 1.0,
    "gamma": 1.0,
    "cast": 0.0,  # per-image random colour cast amplitude per channel
    "temperature": 0.0,  # -1 cool .. +1 warm
    "haze": 0.0,  # haze density per metre
    "haze_color": [0.80, 0.82, 0.85],
    "fog": 0.0,  # fog density per metre (stronger, whiter, lowers contrast)
    "rain": 0.0,  # rain streak strength
    "wet": 0.0,  # wet road darkening and reflections
    "snow": 0.0,  # snow cover
    "flakes": 0.0,  # falling snow
    "night": 0.0,  # 1: night lighting
    "ambient": 1.0,  # light level at night / dusk
    "lights": 0.0,  # street light / head light strength
    "lamp_warmth": 1.0,  # 1 sodium orange .. 0 white LED
    "clouds": 0.3,
    "blur": 0.0,  # Gaussian blur sigma in output pixels
    "noise": 0.0,  # sensor noise sigma
    "vignette": 0.0,
    "art": "none",  # prior only: painting, watercolor, sketch, cartoon, vintage, bw
}

DOMAIN_SPECS: dict[str, dict] = {
    "game": {
        "description": "synthetic game look (GTA5 stand-in): saturated, clean flat-shaded surfaces, crisp edges, strong sun with hard shadows",
        "palette": {
            "road": [[0.26, 0.27, 0.33]],
            "lane": [[1.0, 1.0, 0.96]],
            "lane2": [[1.0, 0.80, 0.05]],
            "sidewalk": [[0.78, 0.70, 0.60]],
            "building": [[0.92, 0.55, 0.30], [0.95, 0.85, 0.50], [0.45, 0.72, 0.90], [0.85, 0.35, 0.30], [0.98, 0.93, 0.82], [0.50, 0.78, 0.55]],
            "window": [[0.10, 0.35, 0.65]],
            "wall": [[0.90, 0.78, 0.55]],
            "fence": [[0.25, 0.30, 0.45]],
            "pole": [[0.22, 0.26, 0.32]],
            "tl_box": [[0.95, 0.75, 0.05]],
            "sign": [[1.0, 0.10, 0.05], [0.05, 0.30, 0.95], [1.0, 0.85, 0.0]],
            "vegetation": [[0.15, 0.70, 0.10], [0.30, 0.80, 0.15]],
            "trunk": [[0.50, 0.30, 0.12]],
            "terrain": [[0.55, 0.85, 0.20], [0.75, 0.65, 0.30]],
            "sky_top": [[0.10, 0.40, 1.0]],
            "sky_bottom": [[0.55, 0.85, 1.0]],
            "cloud": [[1.0, 1.0, 1.0]],
            "cloth": [[0.95, 0.15, 0.10], [0.10, 0.40, 0.95], [0.98, 0.85, 0.10], [0.10, 0.75, 0.30], [0.98, 0.98, 0.98], [0.70, 0.20, 0.80]],
            "car": [[0.95, 0.10, 0.08], [0.05, 0.25, 0.95], [1.0, 0.85, 0.05], [0.98, 0.98, 0.98], [0.05, 0.70, 0.30], [0.95, 0.45, 0.05]],
            "truck": [[0.98, 0.55, 0.05], [0.90, 0.90, 0.95], [0.10, 0.50, 0.90]],
            "bus": [[0.95, 0.80, 0.05], [0.95, 0.20, 0.10]],
            "train": [[0.95, 0.95, 0.98], [0.95, 0.20, 0.10]],
            "bike": [[0.95, 0.10, 0.55], [0.10, 0.85, 0.85]],
            "moto": [[0.95, 0.10, 0.08], [0.10, 0.20, 0.95]],
            "glass": [[0.25, 0.55, 0.80]],
            "gravel": [[0.60, 0.45, 0.30]],
        },
        "palette_jitter": 0.04,
        "params": {"sun": [0.75, 1.0], "shadow_p": 0.85, "tex": 0.02, "window_contrast": 1.3, "contrast": 1.15, "saturation": 1.35, "clouds": [0.0, 0.25]},
        "camera": {"horizon": [0.42, 0.50], "focal": [0.95, 1.10], "height": [1.2, 1.5], "vp_shift": [-0.05, 0.05], "hood": 0.0},
        "conditions": {"sunny": [1.0, {}]},
    },
    "cityscapes": {
        "description": "Cityscapes stand-in: muted grey-ish daylight, slight haze, soft focus, ego-vehicle hood (ignore) at the bottom",
        "palette": {
            "road": [[0.36, 0.35, 0.35]],
            "sidewalk": [[0.50, 0.48, 0.46]],
            "building": [[0.52, 0.50, 0.47], [0.58, 0.55, 0.50], [0.45, 0.44, 0.43], [0.55, 0.47, 0.42], [0.62, 0.60, 0.57]],
            "vegetation": [[0.26, 0.31, 0.19], [0.22, 0.27, 0.16]],
            "terrain": [[0.40, 0.42, 0.29]],
            "sky_top": [[0.74, 0.78, 0.82]],
            "sky_bottom": [[0.86, 0.87, 0.88]],
            "car": [[0.55, 0.56, 0.58], [0.12, 0.12, 0.13], [0.75, 0.75, 0.76], [0.28, 0.30, 0.36], [0.38, 0.20, 0.18]],
            "hood": [[0.30, 0.31, 0.33]],
        },
        "palette_jitter": 0.025,
        "params": {"sun": [0.0, 0.25], "shadow_p": 0.1, "tex": 0.09, "haze": [0.004, 0.009], "haze_color": [0.78, 0.80, 0.82], "saturation": [0.65, 0.8], "contrast": [0.8, 0.9], "exposure": [0.95, 1.05], "blur": [0.4, 0.7], "noise": 0.012, "clouds": [0.2, 0.6]},
        "camera": {"horizon": [0.40, 0.47], "focal": [1.0, 1.12], "height": [1.3, 1.5], "vp_shift": [-0.04, 0.04], "hood": 1.0},
        "conditions": {"sunny": [1.0, {}]},
    },
    "bdd100k": {
        "description": "BDD100K stand-in: dashcam look with per-image colour casts, blur, vignetting, low contrast, sometimes dusk; hood (ignore) at the bottom",
        "palette": {
            "road": [[0.38, 0.37, 0.36]],
            "sidewalk": [[0.56, 0.55, 0.52]],
            "building": [[0.58, 0.52, 0.46], [0.48, 0.48, 0.50], [0.66, 0.60, 0.50], [0.50, 0.38, 0.32]],
            "sky_top": [[0.60, 0.70, 0.82]],
            "sky_bottom": [[0.85, 0.86, 0.86]],
            "hood": [[0.08, 0.08, 0.09]],
        },
        "palette_jitter": 0.04,
        "params": {"sun": [0.1, 0.5], "shadow_p": 0.3, "tex": 0.07, "cast": 0.14, "blur": [0.6, 1.1], "vignette": [0.35, 0.6], "contrast": [0.68, 0.82], "saturation": [0.75, 1.0], "exposure": [0.95, 1.25], "noise": 0.02, "haze": [0.002, 0.006], "haze_color": [0.75, 0.75, 0.78]},
        "camera": {"horizon": [0.44, 0.52], "focal": [0.85, 1.0], "height": [1.2, 1.45], "vp_shift": [-0.06, 0.06], "hood": 1.0},
        "conditions": {
            "sunny": [0.72, {}],
            "dusk": [0.28, {"ambient": [0.35, 0.55], "lights": [0.5, 0.9], "sun": 0.0, "shadow_p": 0.0, "temperature": [0.2, 0.6], "lamp_warmth": 0.8}],
        },
    },
    "mapillary": {
        "description": "Mapillary Vistas stand-in: varied cameras worldwide: per-image colour temperature, exposure, saturation, horizon height and field of view",
        "palette": {
            "road": [[0.44, 0.43, 0.42]],
            "sidewalk": [[0.62, 0.58, 0.52]],
            "building": [[0.80, 0.72, 0.58], [0.66, 0.38, 0.30], [0.85, 0.85, 0.82], [0.55, 0.62, 0.70], [0.78, 0.60, 0.42], [0.50, 0.48, 0.46]],
            "vegetation": [[0.28, 0.42, 0.18], [0.34, 0.48, 0.22]],
            "sky_top": [[0.40, 0.60, 0.88]],
            "sky_bottom": [[0.78, 0.86, 0.94]],
        },
        "palette_jitter": 0.05,
        "params": {"sun": [0.2, 0.8], "shadow_p": 0.5, "tex": 0.1, "temperature": [-0.8, 0.8], "exposure": [0.7, 1.3], "saturation": [0.7, 1.3], "contrast": [0.85, 1.15], "blur": [0.0, 0.6], "noise": [0.0, 0.02], "haze": [0.0, 0.005], "clouds": [0.0, 0.8]},
        "camera": {"horizon": [0.30, 0.56], "focal": [0.7, 1.3], "height": [1.2, 2.4], "vp_shift": [-0.12, 0.12], "hood": 0.0},
        "conditions": {"sunny": [1.0, {}]},
    },
    "acdc": {
        "description": "ACDC stand-in: adverse conditions mixed per image (fog, rain, snow, night), condition recorded per image",
        "palette": {
            "road": [[0.37, 0.37, 0.38]],
            "building": [[0.60, 0.57, 0.52], [0.68, 0.66, 0.62], [0.50, 0.47, 0.45], [0.62, 0.52, 0.44]],
        },
        "palette_jitter": 0.03,
        "params": {"sun": 0.0, "shadow_p": 0.0, "tex": 0.08, "saturation": [0.6, 0.85], "contrast": [0.8, 0.95], "blur": [0.3, 0.6], "noise": 0.015},
        "camera": {"horizon": [0.40, 0.48], "focal": [0.95, 1.1], "height": [1.3, 1.6], "vp_shift": [-0.05, 0.05], "hood": 0.0},
        "conditions": {
            "fog": [0.25, {"fog": [0.025, 0.06], "haze_color": [0.78, 0.79, 0.80], "contrast": [0.7, 0.85], "clouds": 0.0}],
            "rain": [0.25, {"rain": [0.5, 1.0], "wet": [0.5, 0.9], "exposure": [0.65, 0.8], "haze": [0.006, 0.012], "haze_color": [0.55, 0.57, 0.60], "clouds": 0.0}],
            "snow": [0.25, {"snow": [0.6, 1.0], "flakes": [0.3, 0.9], "haze": [0.005, 0.012], "haze_color": [0.85, 0.86, 0.88], "exposure": [0.95, 1.1], "clouds": 0.0}],
            "night": [0.25, {"night": 1.0, "ambient": [0.10, 0.18], "lights": [0.8, 1.2], "noise": 0.035, "lamp_warmth": [0.5, 1.0]}],
        },
    },
    "darkzurich": {
        "description": "Dark Zurich stand-in: night: dark scenes, street-light pools, head and tail lights, lit windows, sensor noise",
        "palette": {
            "road": [[0.36, 0.36, 0.37]],
            "building": [[0.60, 0.56, 0.50], [0.52, 0.50, 0.48], [0.66, 0.62, 0.56]],
        },
        "palette_jitter": 0.03,
        "params": {"sun": 0.0, "shadow_p": 0.0, "night": 1.0, "ambient": [0.05, 0.10], "lights": [0.9, 1.3], "lamp_warmth": [0.7, 1.0], "noise": [0.03, 0.05], "blur": [0.4, 0.8], "saturation": [0.7, 0.9], "tex": 0.06, "clouds": 0.0},
        "camera": {"horizon": [0.40, 0.48], "focal": [0.95, 1.1], "height": [1.3, 1.6], "vp_shift": [-0.05, 0.05], "hood": 0.0},
        "conditions": {"night": [1.0, {}]},
    },
}

PRIOR_CAMERA = {"horizon": [0.30, 0.58], "focal": [0.7, 1.35], "height": [1.1, 2.6], "vp_shift": [-0.12, 0.12], "hood": 0.15}

PRIOR_STYLES = {  # style word -> (probability, art mode)
    "photo": (0.34, "none"),
    "blurry photo": (0.06, "none"),
    "vintage photo": (0.08, "vintage"),
    "black and white photo": (0.05, "bw"),
    "painting": (0.13, "painting"),
    "watercolor painting": (0.08, "watercolor"),
    "sketch": (0.08, "sketch"),
    "cartoon": (0.10, "cartoon"),
    "overcast photo": (0.08, "none"),
}
PRIOR_WEATHER_P = {"sunny": 0.30, "foggy": 0.17, "rainy": 0.17, "snowy": 0.16, "night": 0.20}

# Words that name what is in an image, for captions.
CAPTION_NAMES = {
    0: "road", 1: "sidewalk", 2: "buildings", 3: "wall", 4: "fence", 5: "poles", 6: "traffic light",
    7: "traffic sign", 8: "trees", 9: "grass", 10: "sky", 11: "person", 12: "rider", 13: "car",
    14: "truck", 15: "bus", 16: "train", 17: "motorcycle", 18: "bicycle",
}


@dataclass
class Style:
    name: str
    condition: str
    palette: dict[str, np.ndarray]
    p: dict
    camera: dict
    tex_salt: int = 0
    extra: dict = field(default_factory=dict)

    def pick(self, key: str, u: float) -> np.ndarray:
        options = self.palette[key]
        return options[min(int(u * len(options)), len(options) - 1)]

    def __getattr__(self, name):  # style parameters read as attributes: st.sun, st.fog ...
        p = self.__dict__.get("p")
        if p is not None and name in p:
            return p[name]
        raise AttributeError(name)


def _draw(value, rng: np.random.Generator):
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        lo, hi = value
        return float(rng.uniform(lo, hi)) if hi != lo else float(lo)
    if isinstance(value, dict) and "choice" in value:
        i = rng.choice(len(value["choice"]), p=value.get("p"))
        return value["choice"][int(i)]
    return value


def _choose_condition(conditions: dict, rng: np.random.Generator) -> tuple[str, dict]:
    names = list(conditions)
    probs = np.array([conditions[n][0] for n in names], dtype=float)
    i = int(rng.choice(len(names), p=probs / probs.sum()))
    return names[i], conditions[names[i]][1]


def sample_domain_style(domain: str, rng: np.random.Generator) -> Style:
    spec = DOMAIN_SPECS[domain]
    condition, overrides = _choose_condition(spec["conditions"], rng)
    raw = {**DEFAULT_PARAMS, **spec["params"], **overrides}
    p = {k: _draw(v, rng) for k, v in raw.items()}
    jitter = spec["palette_jitter"]
    palette = {}
    for key, base in BASE_PALETTE.items():
        cols = np.asarray(spec["palette"].get(key, base), dtype=np.float32)
        cols = cols + rng.uniform(-jitter, jitter, size=(1, 3)).astype(np.float32)
        palette[key] = np.clip(cols, 0.0, 1.0)
    if p["night"] or condition == "dusk":
        _night_sky(palette, p, rng, dusk=condition == "dusk")
    elif p["fog"] > 0:
        palette["sky_top"] = palette["sky_bottom"] = np.asarray([p["haze_color"]], np.float32)
    elif p["rain"] > 0 or p["snow"] > 0:
        grey = np.asarray([[0.62, 0.64, 0.67]], np.float32) * (1.1 if p["snow"] > 0 else 0.9)
        palette["sky_top"], palette["sky_bottom"] = grey * 0.95, grey * 1.08
    camera = {k: _draw(v, rng) for k, v in spec["camera"].items()}
    camera["hood"] = bool(rng.random() < camera["hood"])
    return Style(domain, condition, palette, p, camera, tex_salt=0)


def _night_sky(palette, p, rng, dusk: bool) -> None:
    if dusk:
        palette["sky_top"] = np.asarray([[0.25, 0.28, 0.45]], np.float32) * rng.uniform(0.8, 1.2)
        palette["sky_bottom"] = np.asarray([[0.85, 0.55, 0.38]], np.float32) * rng.uniform(0.8, 1.1)
    else:
        palette["sky_top"] = np.asarray([[0.02, 0.03, 0.06]], np.float32)
        palette["sky_bottom"] = np.asarray([[0.10, 0.09, 0.10]], np.float32) * rng.uniform(0.8, 1.6)
    warm = p["lamp_warmth"]
    palette["lamp"] = np.asarray([[1.0, 0.95 - 0.25 * warm, 0.90 - 0.55 * warm]], np.float32)


# -- the prior's broad style distribution ------------------------------------------------------


def _hsv(h, s, v) -> list[float]:
    return list(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _prior_palette(rng: np.random.Generator) -> dict[str, np.ndarray]:
    u = rng.uniform

    def grey(vlo, vhi, smax=0.12):
        return _hsv(u(0, 1), u(0, smax), u(vlo, vhi))

    pal: dict[str, list] = {
        "road": [grey(0.18, 0.55, 0.10)],
        "lane": [grey(0.7, 0.95, 0.15)],
        "lane2": [_hsv(u(0.10, 0.16), u(0.4, 0.9), u(0.6, 0.95))],
        "sidewalk": [grey(0.35, 0.75, 0.18)],
        "building": [_hsv(u(0, 1), u(0, 0.45) * (u() < 0.7) + u(0, 0.15), u(0.30, 0.90)) for _ in range(rng.integers(3, 7))],
        "window": [grey(0.08, 0.35, 0.3)],
        "window_lit": [_hsv(u(0.08, 0.16), u(0.2, 0.6), u(0.8, 1.0))],
        "wall": [grey(0.35, 0.75, 0.25)],
        "fence": [grey(0.2, 0.6, 0.3)],
        "pole": [grey(0.2, 0.6, 0.15)],
        "tl_box": [grey(0.05, 0.4, 0.6)],
        "sign": [_hsv(u(0, 1), u(0.4, 0.9), u(0.5, 0.95)) for _ in range(3)],
        "vegetation": [_hsv(u(0.18, 0.38), u(0.25, 0.75), u(0.15, 0.55)) for _ in range(3)],
        "trunk": [_hsv(u(0.05, 0.12), u(0.3, 0.6), u(0.15, 0.4))],
        "terrain": [_hsv(u(0.10, 0.30), u(0.2, 0.6), u(0.25, 0.6)) for _ in range(2)],
        "sky_top": [_hsv(u(0.55, 0.65), u(0.05, 0.6), u(0.6, 1.0))],
        "sky_bottom": [_hsv(u(0.5, 0.65), u(0.0, 0.25), u(0.75, 1.0))],
        "cloud": [grey(0.85, 1.0, 0.05)],
        "skin": [_hsv(u(0.04, 0.09), u(0.25, 0.55), u(0.3, 0.95)) for _ in range(3)],
        "cloth": [_hsv(u(0, 1), u(0, 0.8), u(0.1, 0.9)) for _ in range(6)],
        "car": [_hsv(u(0, 1), u(0, 0.8) * (u() < 0.5), u(0.08, 0.95)) for _ in range(6)],
        "truck": [_hsv(u(0, 1), u(0, 0.7), u(0.3, 0.95)) for _ in range(3)],
        "bus": [_hsv(u(0, 1), u(0, 0.8), u(0.3, 0.95)) for _ in range(3)],
        "train": [_hsv(u(0, 1), u(0, 0.8), u(0.3, 0.95)) for _ in range(2)],
        "bike": [_hsv(u(0, 1), u(0, 0.8), u(0.1, 0.9)) for _ in range(3)],
        "moto": [_hsv(u(0, 1), u(0, 0.8), u(0.1, 0.9)) for _ in range(3)],
        "glass": [grey(0.1, 0.4, 0.3)],
        "hood": [grey(0.05, 0.5, 0.3)],
        "gravel": [grey(0.3, 0.5, 0.2)],
    }
    out = {k: np.asarray(v, np.float32) for k, v in BASE_PALETTE.items()}
    out.update({k: np.asarray(v, np.float32) for k, v in pal.items()})
    return out


def sample_prior_style(rng: np.random.Generator) -> Style:
    words = list(PRIOR_STYLES)
    probs = np.array([PRIOR_STYLES[w][0] for w in words])
    word = words[int(rng.choice(len(words), p=probs / probs.sum()))]
    art = PRIOR_STYLES[word][1]
    weathers = list(PRIOR_WEATHER_P)
    wp = np.array([PRIOR_WEATHER_P[w] for w in weathers])
    weather = weathers[int(rng.choice(len(weathers), p=wp / wp.sum()))]
    if word == "overcast photo" and weather == "sunny":
        weather = str(rng.choice(["foggy", "rainy", "snowy"]))
    u = rng.uniform
    p = dict(DEFAULT_PARAMS)
    p.update(
        sun=u(0.0, 0.15), shadow_p=0.0, tex=u(0.02, 0.2), window_contrast=u(0.6, 1.2),
        exposure=u(0.75, 1.25), contrast=u(0.7, 1.2), saturation=u(0.5, 1.3), gamma=u(0.85, 1.15),
        cast=u(0.0, 0.16), temperature=u(-0.7, 0.7), clouds=u(0.0, 0.9),
        blur=u(0.0, 1.2) if word != "blurry photo" else u(1.2, 2.0), noise=u(0.0, 0.04), vignette=u(0.0, 0.5) * (u() < 0.5),
        haze=u(0.0, 0.01), haze_color=[float(v) for v in np.clip(np.array(_hsv(u(0.5, 0.7), u(0, 0.15), u(0.6, 0.95))), 0, 1)], art=art,
    )
    palette = _prior_palette(rng)
    if weather == "sunny":
        p.update(sun=u(0.25, 0.9), shadow_p=u(0.2, 0.7))
    elif weather == "foggy":
        p.update(fog=u(0.012, 0.08) * (0.5 if art != "none" else 1.0), contrast=u(0.6, 1.0))
        palette["sky_top"] = palette["sky_bottom"] = np.asarray([p["haze_color"]], np.float32)
    elif weather == "rainy":
        p.update(rain=u(0.3, 1.0), wet=u(0.3, 1.0), exposure=u(0.55, 0.9), haze=u(0.004, 0.015))
        g = np.asarray([_hsv(u(0.5, 0.7), u(0, 0.12), u(0.45, 0.75))], np.float32)
        palette["sky_top"], palette["sky_bottom"] = g * 0.92, g * 1.1
    elif weather == "snowy":
        p.update(snow=u(0.4, 1.0), flakes=u(0.0, 1.0), haze=u(0.003, 0.015))
        g = np.asarray([_hsv(u(0.5, 0.7), u(0, 0.1), u(0.6, 0.9))], np.float32)
        palette["sky_top"], palette["sky_bottom"] = g * 0.95, g * 1.08
    else:  # night
        p.update(night=1.0, ambient=u(0.04, 0.35), lights=u(0.5, 1.5), lamp_warmth=u(0.0, 1.0), noise=u(0.0, 0.06))
        _night_sky(palette, p, rng, dusk=bool(u() < 0.2))
    camera = {k: _draw(v, rng) for k, v in PRIOR_CAMERA.items()}
    camera["hood"] = bool(rng.random() < camera["hood"])
    for key in palette:
        palette[key] = np.clip(palette[key], 0.0, 1.0)
    return Style("prior", weather, palette, p, camera, tex_salt=1, extra={"style": word, "weather": weather})


def caption(style: Style, class_pixels: np.ndarray, rng: np.random.Generator) -> str:
    """A caption with a style word, a weather word and some classes present (largest first)."""
    total = max(int(class_pixels.sum()), 1)
    present = [c for c in np.argsort(-class_pixels) if class_pixels[c] / total > 0.004 and c not in (0, 10)]
    k = int(rng.integers(1, 5))
    names = [CAPTION_NAMES[int(c)] for c in present[:k]] or ["road"]
    word = style.extra["style"]
    weather = style.extra["weather"]
    article = "an" if word[0] in "aeiou" else "a"
    template = int(rng.integers(0, 3))
    listing = ", ".join(names)
    if template == 0:
        return f"{article} {word} of a city street with {listing}, in {weather} weather"
    if template == 1:
        return f"A city street scene with {listing}, in {weather} weather, {word}"
    return f"{article} {word} of a street scene with {listing} in {weather} weather"


def spec_for_manifest(domain: str) -> dict:
    if domain == "prior":
        return {
            "description": "unlabelled multi-style prior corpus: palettes, lighting, weather and camera drawn per image from broad random distributions; no target style reused; no game look",
            "styles": {k: v[0] for k, v in PRIOR_STYLES.items()},
            "weather": dict(PRIOR_WEATHER_P),
            "camera": dict(PRIOR_CAMERA),
        }
    spec = copy.deepcopy(DOMAIN_SPECS[domain])
    spec["params"] = {**DEFAULT_PARAMS, **spec["params"]}
    return spec
