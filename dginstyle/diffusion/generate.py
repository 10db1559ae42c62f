"""`generate`: one shard of the generated dataset, MRLF (or plain) pairs from a plan.

Sharding: shard k of n takes the plan rows with id % n == k (interleaved, not contiguous
blocks): every shard gets a similar mix of prompt kinds and layouts whatever order the plan
has, shards stay balanced to within one pair, and a shard's rows are generated in id order.

Output (`out`, e.g. results/generated/<gen>/<shard>/):
    images/<id>.png      the generated RGB image (crop size)
    labels/<id>.png      the crop L of the source label, uint8 train IDs (255 = ignore)
    pairs.jsonl          one row per pair: id, seed, prompt, prompt_kind, weather, source
                         (split, stem, crop box), rare class, classes, mode
    contact_sheet.png    image | condition label | prompt, for the first pairs
    manifest.json        the configuration, the pair count and the files' sha256

Resume protocol. The shard is built in the hidden sibling `.<name>.partial` (outside the
declared output, which Snakemake deletes when a job fails), next to a `run.json` naming the
configuration. A pair is committed in three moves: image and label are written under temp
names, both renamed into place, then its row is appended to pairs.jsonl (flushed and fsynced).
A row therefore exists only for a pair whose two files are complete. On a rerun with the same
configuration the partial folder is repaired (a trailing partial row cut off, files without a
row and temp files deleted) and generation resumes at the first pair without a row; with a
different configuration it is started afresh. When every pair is there the contact sheet and
manifest.json are written and the folder is renamed to `out`.

Randomness: every pair is seeded by its id (a CPU torch.Generator), so the same plan and
settings give identical labels and rows, and identical images on the same device.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dginstyle import __version__
from dginstyle.data import contract
from dginstyle.diffusion import models
from dginstyle.diffusion.layouts import crop_of, read_plan
from dginstyle.diffusion.style_swap import load_generator
from dginstyle.diffusion.mrlf import FUSION_TIMESTEPS, MODES, TIMESTEP_SPACINGS, MRLFSettings, generate_image, vae_downsample
from dginstyle.io import DataError, atomic_write_bytes, atomic_write_json, encode_label_png, encode_rgb_png, read_label_png, naming, remove_ours, replace_dir, sha256_file, write_bytes
from dginstyle.labels import colorize
from dginstyle.outputs import claim_workspace

log = logging.getLogger(__name__)

PAIRS = "pairs.jsonl"
RUN = "run.json"
MANIFEST = "manifest.json"
CONTACT_SHEET = "contact_sheet.png"
CONTACT_ROWS = 16


# ----------------------------------------------------------------------------- generator folder


TINY_SPEC = models.TinySpec(
    vae_channels=(8, 16, 16), unet_channels=(16, 32, 32), unet_attention_head_dim=8,
    text_hidden=16, text_layers=1, text_heads=2, norm_groups=4, max_tokens=32,
)


def tiny_generator(folder: Path, spec: models.TinySpec = TINY_SPEC, resolution: int = 32, seed: int = 0, conditioning_channels: int = models.NUM_CONDITION_CHANNELS) -> Path:
    """A randomly initialised generator folder (pipeline + controlnet/) for tests and benchmarks."""
    from dginstyle.diffusion.layouts import ADVERSE_WORDS, WEATHER_TEMPLATE
    from dginstyle.labels import CLASSES

    folder = Path(folder)
    captions = list(CLASSES) + [WEATHER_TEMPLATE.format(classes="", weather=" ".join(ADVERSE_WORDS + ("sunny", "night")))]
    components = models.tiny_components(spec, captions, resolution, folder / ".tokenizer", seed=seed)
    controlnet = models.controlnet_from_unet(components["unet"], components["vae"], conditioning_channels=conditioning_channels)
    models.save_pipeline(folder, components, {"kind": "generator", "variant": "random tiny (tests/benchmarks)", "spec": models.spec_as_dict(spec)})
    controlnet.save_pretrained(folder / "controlnet", safe_serialization=True)
    shutil.rmtree(folder / ".tokenizer")
    return folder


def check_plan_rows(rows: list[dict], plan: Path, factor: int, generator: Path) -> None:
    for row in rows:
        x0, y0, x1, y1 = row["crop"]
        w, h = x1 - x0, y1 - y0
        if w % factor or h % factor:
            raise DataError(
                f"{plan}: pair {row['id']}: crop {w}x{h} is not divisible by the VAE downsample factor {factor} of {generator / 'vae'}"
            )


# ----------------------------------------------------------------------------- resume protocol


def partial_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def recover(folder: Path) -> dict[int, dict]:
    """Repair a partial shard folder after a kill; return its committed rows by id.

    Keeps the complete rows whose image and label both exist; cuts a trailing partial row;
    deletes temp files and files without a row.
    """
    pairs = folder / PAIRS
    rows: dict[int, dict] = {}
    good = b""
    if pairs.is_file():
        data = pairs.read_bytes()
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is never complete
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if not ((folder / "images" / f"{row['id']}.png").is_file() and (folder / "labels" / f"{row['id']}.png").is_file()):
                break
            rows[int(row["id"])] = row
            good += line + b"\n"
        if good != data:
            log.info("%s: cut %d bytes of incomplete rows", pairs, len(data) - len(good))
            atomic_write_bytes(pairs, good)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for path in (folder / sub).iterdir():
            stem = path.name[: -len(".png")] if path.name.endswith(".png") else None
            if stem is None or not stem.isdigit() or int(stem) not in rows:
                path.unlink()
    return rows


def commit_pair(folder: Path, pair_id: int, image: np.ndarray, label: np.ndarray, row: dict) -> None:
    """Image + label under temp names -> renamed -> row appended (the commit point)."""
    final = [folder / "images" / f"{pair_id}.png", folder / "labels" / f"{pair_id}.png"]
    temps = [p.with_name(f".{p.name}.tmp") for p in final]
    write_bytes(temps[0], encode_rgb_png(image))
    write_bytes(temps[1], encode_label_png(label))
    for tmp, path in zip(temps, final):
        os.replace(tmp, path)
    # a row cut short here (a full disk, a kill) is cut off by `recover` on the rerun
    with naming(folder / PAIRS), open(folder / PAIRS, "ab") as handle:
        handle.write((json.dumps(row) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- contact sheet


def contact_sheet(folder: Path, rows: list[dict], out: Path, height: int = 96, text_width: int = 300) -> None:
    """image | colour-coded condition label | prompt, one row per pair."""
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:
        font = ImageFont.load_default()
    tiles = []
    for row in rows:
        with Image.open(folder / "images" / f"{row['id']}.png") as img:
            image = img.convert("RGB")
        label = Image.fromarray(colorize(read_label_png(folder / "labels" / f"{row['id']}.png")))
        w = max(1, round(image.width * height / image.height))
        tiles.append((image.resize((w, height), Image.BILINEAR), label.resize((w, height), Image.NEAREST), row))
    gap = 4
    width = max([2 * t[0].width for t in tiles] + [0]) + 3 * gap + text_width
    sheet = Image.new("RGB", (width, max(1, len(tiles)) * (height + gap) + gap), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (image, label, row) in enumerate(tiles):
        y = gap + i * (height + gap)
        sheet.paste(image, (gap, y))
        sheet.paste(label, (2 * gap + image.width, y))
        text = f"#{row['id']} [{row.get('prompt_kind')}] {row['prompt']}"
        draw.multiline_text((3 * gap + 2 * image.width, y), "\n".join(textwrap.wrap(text, 48)), fill=(235, 235, 235), font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())


# ----------------------------------------------------------------------------- the shard


def shard_rows(rows: list[dict], shard: int, num_shards: int) -> list[dict]:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards), got shard={shard} num_shards={num_shards}")
    return sorted((r for r in rows if int(r["id"]) % num_shards == shard), key=lambda r: int(r["id"]))


def shard_identity(plan: Path, source: Path, shard: int, num_shards: int) -> dict:
    """What every shard's configuration holds about its plan, source and place in the plan."""
    return {
        "plan": str(plan.resolve()),
        "plan_sha256": sha256_file(plan),
        "source": str(source.resolve()),
        "shard": shard,
        "num_shards": num_shards,
        "sharding": "id % num_shards == shard",
    }


def pair_row(row: dict, pair_id: int, split: str, mode: str) -> dict:
    """A shard's pairs.jsonl row for plan row `row`: its prompt, source crop and rare class."""
    return {
        "id": pair_id, "seed": pair_id, "prompt": row["prompt"], "prompt_kind": row.get("prompt_kind"),
        "weather": row.get("weather"), "split": split, "stem": row["stem"], "crop": row["crop"],
        "rare_class": row.get("rare_class"), "classes": row.get("classes"), "mode": mode,
    }  # fmt: skip


def finish_shard(work: Path, out: Path, rows: list[dict], config: dict, metadata: dict) -> dict:
    """Contact sheet and manifest (configuration, `metadata`, pair ids and file hashes) into the
    complete partial folder `work`, then rename it to `out`; returns the manifest."""
    contact_sheet(work, rows[:CONTACT_ROWS], work / CONTACT_SHEET)
    manifest = {
        "config": config,
        **metadata,
        "pairs": len(rows),
        "ids": [r["id"] for r in rows],
        "dginstyle_version": __version__,
        "label_sha256": {str(r["id"]): sha256_file(work / "labels" / f"{r['id']}.png") for r in rows},
        "image_sha256": {str(r["id"]): sha256_file(work / "images" / f"{r['id']}.png") for r in rows},
    }
    (work / RUN).unlink(missing_ok=True)
    atomic_write_json(work / MANIFEST, manifest)
    replace_dir(work, out)
    return manifest


def generate_shard(
    generator: Path,
    plan: Path,
    source: Path,
    shard: int,
    num_shards: int,
    out: Path,
    mode: str = "mrlf",
    scale: int = 2,
    steps: int = 20,
    guidance_scale: float = 7.5,
    controlnet_scale: float = 1.0,
    window: int = 64,
    stride: int = 8,
    area_threshold: int = 20000,
    fusion_timestep: str = "previous_tick",
    timestep_spacing: str = "leading",
    max_batch: int = 8,
    device: str = "auto",
    precision: str = "fp16",
) -> dict:
    """Generate shard `shard` of `num_shards` of `plan` into `out`; returns the manifest."""
    generator, plan, source, out = Path(generator), Path(plan), Path(source), Path(out)
    settings = MRLFSettings(
        mode=mode, scale=scale, steps=steps, guidance_scale=guidance_scale, controlnet_scale=controlnet_scale,
        window=window, stride=stride, area_threshold=area_threshold, fusion_timestep=fusion_timestep,
        timestep_spacing=timestep_spacing, max_batch=max_batch,
    )  # fmt: skip
    dev = models.pick_device(device)
    dtype = models.pick_dtype(dev, precision)
    rows = shard_rows(read_plan(plan), shard, num_shards)
    contract.read_manifest(source)
    # What makes two runs' pairs interchangeable (max_batch does not change results beyond float noise).
    config = {
        "generator": str(generator.resolve()),
        **shard_identity(plan, source, shard, num_shards),
        "settings": {k: v for k, v in settings.as_dict().items() if k not in ("max_batch", "views", "skip_masked_views")},
        "device": dev.type,
        "dtype": str(dtype).replace("torch.", ""),
    }
    if (out / MANIFEST).is_file() and json.loads((out / MANIFEST).read_text()).get("config") == config:
        log.info("%s: already complete with this configuration", out)
        return json.loads((out / MANIFEST).read_text())

    components = load_generator(generator, dev, dtype)
    factor = vae_downsample(components["vae"])
    check_plan_rows(rows, plan, factor, generator)

    work = partial_dir(out)
    if work.exists() and (not (work / RUN).is_file() or json.loads((work / RUN).read_text()) != config):
        log.info("%s: configuration changed, starting the shard afresh", work)
        remove_ours(work, "generate")
    claim_workspace(work, "generate")
    if not (work / RUN).is_file():
        atomic_write_json(work / RUN, config)
    done = recover(work)
    todo = [r for r in rows if int(r["id"]) not in done]
    log.info("shard %d/%d: %d pairs, %d done, %d to generate on %s (%s)", shard, num_shards, len(rows), len(done), len(todo), dev, config["dtype"])

    labels_cache: dict[tuple[str, str], np.ndarray] = {}
    started = time.time()
    for n, row in enumerate(todo, 1):
        pair_id = int(row["id"])
        key = (row.get("split", "train"), row["stem"])
        if key not in labels_cache:
            labels_cache.clear()  # plans rarely repeat an image back to back; keep one
            labels_cache[key] = read_label_png(contract.label_path(source, *key))
        label = crop_of(labels_cache[key], row, plan)
        image = generate_image(components, label, row["prompt"], pair_id, settings)
        commit_pair(work, pair_id, image, label, pair_row(row, pair_id, key[0], mode))
        if n % 10 == 0 or n == len(todo):
            log.info("shard %d: %d/%d pairs (%.2f s/pair)", shard, n, len(todo), (time.time() - started) / n)

    final_rows = list(recover(work).values())
    if sorted(r["id"] for r in final_rows) != [int(r["id"]) for r in rows]:
        raise DataError(f"{work}: the shard is incomplete after generation (a concurrent run?)")
    return finish_shard(work, out, final_rows, config, {"generator_metadata": models.read_metadata(generator)})


# ----------------------------------------------------------------------------- CLI


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="one shard of generated pairs (MRLF or plain) from a layout plan",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--generator", required=True, type=Path, help="generator folder (pipeline + controlnet/)")
    p.add_argument("--plan", required=True, type=Path, help="plan JSONL from select-layouts")
    p.add_argument("--source", required=True, type=Path, help="prepared source dataset the plan crops from")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--out", required=True, type=Path, help="shard folder (replaced only when complete)")
    p.add_argument("--mode", choices=MODES, default="mrlf")
    p.add_argument("--scale", type=int, default=2, help="pass-2 resolution factor")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--controlnet-scale", type=float, default=1.0)
    p.add_argument("--window", type=int, default=64, help="view size in latent pixels")
    p.add_argument("--stride", type=int, default=8, help="view stride in latent pixels")
    p.add_argument("--area-threshold", type=int, default=20000, help="large-region area A in pixels at crop resolution")
    p.add_argument("--fusion-timestep", choices=FUSION_TIMESTEPS, default="previous_tick")
    p.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS, default="leading", help="DDIM timesteps: leading (SD 1.5, the paper) or trailing (from t = 999)")
    p.add_argument("--max-batch", type=int, default=8, help="views per batched ControlNet/UNet call")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("fp16", "bf16", "no"), default="fp16", help="model precision on CUDA (CPU: float32)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    generate_shard(
        generator=args.generator, plan=args.plan, source=args.source, shard=args.shard, num_shards=args.num_shards,
        out=args.out, mode=args.mode, scale=args.scale, steps=args.steps, guidance_scale=args.guidance_scale,
        controlnet_scale=args.controlnet_scale, window=args.window, stride=args.stride, area_threshold=args.area_threshold,
        fusion_timestep=args.fusion_timestep, timestep_spacing=args.timestep_spacing, max_batch=args.max_batch, device=args.device, precision=args.precision,
    )
