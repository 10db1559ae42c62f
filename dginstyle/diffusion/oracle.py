"""`render-oracle`: the upper bound of a generator, one shard of perfect pairs from a layout plan.

A diagnostic, not part of the method. It answers "what would the segmenter gain if the
generator were perfect?", which tells a generator that falls short from a world (or a
protocol) in which the Style Swap cannot pay off at all. Two looks:

* `prior` (generator `oracle` in the config): each plan crop's own scene, drawn by the
  miniature world's renderer in a style of the prior corpus, with the prompt's weather when
  the prompt names one (fog, rain, snow, night; a plain prompt leaves the prior's weather
  drawn). This is what an ideal Style Swap generator would return: the layout exactly, in the
  prior's styles. The label is the re-rendered one, so it matches the image pixel for pixel.
  Miniature world only (the source must be a `minicity` dataset of this world version).
* `source` (generator `oracle_no_swap`): the source crop itself, image and label. An ideal
  generator *without* the swap returns the source look exactly: the crops add no new pixels,
  only repeat rare-class crops. Works for any source.

Output: the shard format of `generate` (images/, labels/, pairs.jsonl, contact_sheet.png,
manifest.json), built in a hidden sibling and renamed into place when complete. Rows add
`look`, the prior `style` and `condition` drawn, and `label_agreement` (the share of crop pixels
whose re-rendered label equals the source's; 1 for `source`).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import numpy as np

from dginstyle.data import contract
from dginstyle.diffusion.generate import commit_pair, finish_shard, pair_row, recover, shard_identity, shard_rows
from dginstyle.diffusion.layouts import crop_of, read_plan
from dginstyle.io import DataError, fresh_staging_dir, read_label_png, read_rgb

log = logging.getLogger(__name__)

LOOKS = ("prior", "source")
STEM = re.compile(r"^(?P<domain>[a-z0-9]+)_(?P<split>[A-Za-z0-9_\-]+)_(?P<index>\d{6})$")


def _world_of(source: Path, manifest: dict) -> dict:
    """The miniature world (domain, seed, size, thin-object minimum) that rendered `source`; DataError otherwise."""
    from dginstyle.data.minicity import WORLD_VERSION

    if manifest.get("format") != "minicity":
        raise DataError(
            f"{source}: the oracle look 'prior' re-renders the source's scenes, so the source must be a "
            f"miniature-world (minicity) dataset; this one is {manifest.get('format')!r}"
        )
    if manifest.get("world_version") != WORLD_VERSION:
        raise DataError(f"{source}: rendered by world version {manifest.get('world_version')}, this package draws version {WORLD_VERSION}; prepare it again")
    return {"domain": manifest["domain"], "seed": int(manifest["seed"]), "width": int(manifest["size"]["width"]), "height": int(manifest["size"]["height"]),
            "thin_objects_px": float(manifest.get("thin_objects_px") or 0)}


def render_oracle_shard(plan: Path, source: Path, shard: int, num_shards: int, out: Path, look: str = "prior") -> dict:
    """Write shard `shard` of `num_shards` of `plan` with the oracle `look`; returns the manifest."""
    from dginstyle.data.minicity import render_in_prior_style

    if look not in LOOKS:
        raise DataError(f"unknown oracle look {look!r}; choose one of {', '.join(LOOKS)}")
    plan, source, out = Path(plan), Path(source), Path(out)
    manifest = contract.read_manifest(source)
    world = _world_of(source, manifest) if look == "prior" else None
    rows = shard_rows(read_plan(plan), shard, num_shards)
    config = {"oracle": look, **shard_identity(plan, source, shard, num_shards), "world": world}
    # Seconds of work, so no resume: a leftover partial folder is started afresh.
    work = fresh_staging_dir(out, "render-oracle")
    for folder in ("images", "labels"):
        (work / folder).mkdir(parents=True)
    for row in rows:
        pair_id = int(row["id"])
        split = row.get("split", "train")
        source_label = crop_of(read_label_png(contract.label_path(source, split, row["stem"])), row, plan)
        extra = {"look": look}
        if look == "source":
            image = crop_of(np.asarray(read_rgb(contract.find_image(source, split, row["stem"]))), row, plan)
            label = source_label
            extra.update(style="source", condition=None, label_agreement=1.0)
        else:
            parsed = STEM.match(row["stem"])
            if not parsed or parsed["domain"] != world["domain"] or parsed["split"] != split:
                raise DataError(f"{plan}: pair {pair_id}: stem {row['stem']!r} is not an image of {source} ({world['domain']}, split {split})")
            rgb, full_label, style = render_in_prior_style(
                world["domain"], world["seed"], split, int(parsed["index"]), world["width"], world["height"],
                style_seed=pair_id, weather=row.get("weather"), thin_objects_px=world["thin_objects_px"],
            )  # fmt: skip
            image, label = crop_of(rgb, row, plan), crop_of(full_label, row, plan)
            extra.update(style=style.extra["style"], condition=style.condition, label_agreement=round(float((label == source_label).mean()), 4))
        commit_pair(work, pair_id, image, label, {**pair_row(row, pair_id, split, "oracle"), **extra})
    final_rows = list(recover(work).values())
    agreement = [r["label_agreement"] for r in final_rows]
    result = finish_shard(work, out, final_rows, config, {
        "generator_metadata": {"kind": "oracle", "look": look, "description": __doc__.split("\n\n")[0]},
        "label_agreement_with_source": {"mean": round(float(np.mean(agreement)), 4), "min": round(float(np.min(agreement)), 4)} if agreement else None,
    })  # fmt: skip
    log.info("%s: %d oracle pairs (%s look)", out, len(final_rows), look)
    return result


# ----------------------------------------------------------------------------- CLI


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render-oracle", help="an upper bound: perfect pairs for a layout plan (diagnostic)", description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", required=True, type=Path, help="plan JSONL from select-layouts")
    p.add_argument("--source", required=True, type=Path, help="prepared source dataset the plan crops from")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--look", choices=LOOKS, default="prior", help="prior: the scene in a prior-corpus style (miniature world); source: the source crop itself")
    p.add_argument("--out", required=True, type=Path, help="shard folder (replaced only when complete)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    render_oracle_shard(args.plan, args.source, args.shard, args.num_shards, args.out, look=args.look)
