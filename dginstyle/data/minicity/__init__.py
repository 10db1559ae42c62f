"""`minicity`: the miniature procedural street world, the project's embedded default data.

Nothing real can be downloaded and the whole workflow must run on a small CPU machine, so the
real setting is mirrored in miniature:

* `game` is the labelled source domain (the GTA5 stand-in): clean, saturated, flat-shaded,
  hard sunlight;
* `cityscapes`, `bdd100k`, `mapillary`, `acdc` and `darkzurich` are labelled target domains
  with the looks of their namesakes (see `styles.DOMAIN_SPECS`);
* `prior` is an unlabelled, captioned corpus of street scenes in many styles and weathers,
  standing in for what Stable Diffusion has seen (see the `styles` module docstring for why it
  is fair).

All domains share one layout generator (`scene`): a pinhole camera over a street with
sidewalks, building blocks, side streets, parks, street furniture, traffic and people, so
their label statistics match while their styles differ. Every image is a pure function of
(seed, domain, split, index): its random generator is seeded from those four values, so the
number of worker processes and their order never change a byte of output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import shutil
from pathlib import Path

import numpy as np

from dginstyle.data import contract
from dginstyle.io import DataError
from dginstyle.labels import NUM_CLASSES
from dginstyle.parallel import parallel_map

from .post import finish
from .raster import Canvas
from .scene import draw_scene, sample_layout
from .styles import DOMAIN_SPECS, PRIOR_WEATHER_P, caption, sample_domain_style, sample_prior_style, spec_for_manifest

log = logging.getLogger(__name__)

LABELLED_DOMAINS = ("game", "cityscapes", "bdd100k", "mapillary", "acdc", "darkzurich")
DOMAINS = LABELLED_DOMAINS + ("prior",)
SUPERSAMPLE = 2
# Bump whenever the rendering changes: a prior trained on the corpus records the version it saw,
# and the shipped prior is only reused for a corpus of the same version.
WORLD_VERSION = 1
# Why thin_objects_px exists: at 128x64 a pole is 1 px wide and a traffic light or sign 3-4 px
# in all, below one output pixel of the segmenter (1/4 resolution). The paper trains at 1024x512,
# where such objects span one to several output pixels. Drawing them at least a few pixels
# across (in every labelled domain alike) restores that ratio, so that the small-class claims
# can be measured at all. 0 draws exactly what world version 1 always drew (scene.draw_pole).
CHUNK = 48

__all__ = ["DOMAINS", "LABELLED_DOMAINS", "image_rng", "render_sample", "render_in_prior_style", "prepare_minicity"]


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def image_rng(seed: int, domain: str, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of one image, from (seed, domain, split, index) only."""
    seed = int(seed) % (1 << 64)
    return np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, _h64(domain), _h64(split), int(index)])


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise DataError(f"minicity: unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")


def render_sample(domain: str, seed: int, split: str, index: int, width: int = 128, height: int = 64, thin_objects_px: float = 0.0):
    """Render one image: returns (rgb uint8 (H, W, 3), label uint8 (H, W), style, caption or None).

    thin_objects_px: poles are drawn at least this many output pixels wide, traffic lights
    at least 1.5 x 3 times and traffic signs 2 times that size (0: world version 1's drawing).
    """
    _check_domain(domain)
    s_style, s_layout, s_render, s_caption = image_rng(seed, domain, split, index).spawn(4)
    rng_style = np.random.default_rng(s_style)
    st = sample_prior_style(rng_style) if domain == "prior" else sample_domain_style(domain, rng_style)
    rgb, label = _draw(st, st.camera, s_layout, s_render, width, height, thin_objects_px)
    text = None
    if domain == "prior":
        counts = np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES]
        text = caption(st, counts, np.random.default_rng(s_caption))
    return rgb, label, st, text


def render_in_prior_style(
    domain: str, seed: int, split: str, index: int, width: int, height: int, style_seed: int, weather: str | None = None, thin_objects_px: float = 0.0
):
    """The scene of image (domain, seed, split, index) drawn in a style of the prior corpus:
    same street, camera and objects, a prior palette, light, weather and art style drawn from
    `style_seed` (re-drawn until its weather is `weather`, when one is given). Returns (rgb,
    label, style). The label is the re-rendered one (weather and light can move a few pixels,
    e.g. snow on the kerb), so it matches the image exactly.
    """
    _check_domain(domain)
    if domain == "prior":
        raise DataError("minicity: the prior corpus is unlabelled; re-render a labelled domain")
    s_style, s_layout, s_render, _ = image_rng(seed, domain, split, index).spawn(4)
    camera = sample_domain_style(domain, np.random.default_rng(s_style)).camera
    rng = np.random.default_rng([int(style_seed) & 0xFFFFFFFF, _h64("prior-style")])
    for _ in range(1000):  # the rarest prior weather has probability 0.16
        style = sample_prior_style(rng)
        if weather is None or style.condition == weather:
            break
    else:
        raise DataError(f"minicity: the prior has no weather {weather!r}; it has {', '.join(PRIOR_WEATHER_P)}")
    rgb, label = _draw(style, camera, s_layout, s_render, width, height, thin_objects_px)
    return rgb, label, style


def _draw(st, camera: dict, s_layout, s_render, width: int, height: int, thin_objects_px: float = 0.0):
    """Lay out a street seen by `camera` (from seed s_layout) and draw it in style `st`."""
    if not thin_objects_px >= 0:
        raise DataError(f"minicity: thin_objects_px must be >= 0, got {thin_objects_px}")
    w2, h2 = width * SUPERSAMPLE, height * SUPERSAMPLE
    sc = sample_layout(np.random.default_rng(s_layout), w2, h2, camera)
    night = st.p["night"] > 0 or st.condition == "dusk"
    cv = Canvas(h2, w2, emissive=night, thin_min=float(thin_objects_px) * SUPERSAMPLE)
    rng_render = np.random.default_rng(s_render)
    if camera is not st.camera:
        st = dataclasses.replace(st, camera=camera)
    lights = draw_scene(cv, sc, st, rng_render)
    return finish(cv, sc, st, lights, rng_render)


def _stem(domain: str, split: str, index: int) -> str:
    return f"{domain}_{split}_{index:06d}"


def _render_chunk(args) -> list[contract.Record]:
    staging, domain, seed, width, height, thin_objects_px, jobs = args
    staging = Path(staging)
    records = []
    for split, index in jobs:
        rgb, label, st, text = render_sample(domain, seed, split, index, width, height, thin_objects_px)
        stem = _stem(domain, split, index)
        contract.write_image(staging, split, stem, rgb)
        if domain == "prior":
            rec = contract.Record(split, stem, None, None, (height, width), {"caption": text, **st.extra})
        else:
            rec = contract.write_label(staging, split, stem, label)
            rec.extra = {"condition": st.condition}
        records.append(rec)
    return records


def prepare_minicity(
    out: Path,
    domain: str,
    splits: dict[str, int],
    seed: int,
    width: int,
    height: int,
    workers: int,
    name: str | None,
    rcs_min_pixels: int,
    thin_objects_px: float = 0.0,
) -> dict:
    """Render a miniature-world domain into the prepared-dataset contract; returns the manifest."""
    _check_domain(domain)
    out = Path(out)
    if width < 8 or height < 8:
        raise DataError(f"minicity: image size {width}x{height} is too small (at least 8x8)")
    if not splits:
        raise DataError("minicity: no splits requested (give name=count pairs, e.g. train=800,val=200)")
    for split, count in splits.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", split):
            raise DataError(f"minicity: invalid split name {split!r} (letters, digits, '_' and '-' only)")
        if int(count) < 0:
            raise DataError(f"minicity: split {split!r} has a negative count {count}")
    jobs = [(split, i) for split, count in splits.items() for i in range(int(count))]
    if not thin_objects_px >= 0:
        raise DataError(f"minicity: thin_objects_px must be >= 0, got {thin_objects_px}")
    staging = contract.start(out)
    chunks = [(str(staging), domain, int(seed), int(width), int(height), float(thin_objects_px), jobs[i : i + CHUNK]) for i in range(0, len(jobs), CHUNK)]
    records: list[contract.Record] = []
    try:
        for chunk_records in parallel_map(_render_chunk, chunks, max(1, int(workers))):
            records.extend(chunk_records)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = {
        "dataset": name or out.name,
        "format": "minicity",
        "domain": domain,
        "seed": int(seed),
        "size": {"width": int(width), "height": int(height)},
        "source_root": None,
        "mapping": "identity (the miniature world writes Cityscapes train IDs directly)",
        "style": spec_for_manifest(domain),
        "supersampling": SUPERSAMPLE,
        "generator": "dginstyle.data.minicity",
        "world_version": WORLD_VERSION,
        "thin_objects_px": float(thin_objects_px),
    }
    return contract.finalize(staging, out, records, manifest, rcs_min_pixels)
