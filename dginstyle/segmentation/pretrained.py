"""`convert-pretrained`: public ImageNet backbone checkpoints -> our backbone keys (safetensors),
and the loader behind `train-segmentation --pretrained`.

The public files are pickles (.pth) from outside this project: they are read with
`torch.load(weights_only=True)` only, so a file holding anything but tensors and plain
containers is refused before anything in it runs. What maps:

- `--format mit`: the SegFormer authors' (NVlabs) ImageNet MiT checkpoints (`mit_b5.pth`, the
  DAFormer / DGInStyle pretraining file) -> mmseg's `MixVisionTransformer`:
  `patch_embed{i}.proj|norm` -> `layers.{i-1}.0.projection|norm`, `block{i}.{j}.*` ->
  `layers.{i-1}.1.{j}.*` with `attn.q` and `attn.kv` concatenated into `attn.attn.in_proj_*`,
  `attn.proj` -> `attn.attn.out_proj`, `mlp.fc1|dwconv.dwconv|fc2` -> `ffn.layers.0|1|4` (the
  linear layers become 1x1 convs), `norm{i}` -> `layers.{i-1}.2`; the ImageNet classifier
  `head.*` is dropped. Every tensor maps; nothing is left out of the backbone.
- `--format resnet`: ResNet checkpoints whose key names are already mmseg's (`layer1.0.conv1.weight`,
  `downsample.0|1`, ...), dropping the classifier `fc.*`. Two stems exist:
  * open-mmlab's `resnet101_v1c` (the `open-mmlab://resnet101_v1c` file DAFormer, HRDA and
    DGInStyle start DeepLabV2 from): the 3-conv deep stem `stem.0|1|3|4|6|7.*` of ResNetV1c.
    It fills our `deeplabv2_r101` backbone (ResNetV1c-101) completely.
  * torchvision's `resnet101` (`conv1.weight` 7x7, `bn1.*`): stages 1-4 have the same names and
    shapes as mmseg's, but its stem is a single 7x7 conv, which cannot become ResNetV1c's three
    3x3 convs. The converted file fits mmseg's plain `ResNet` (V1b) only; loading it into
    `deeplabv2_r101` stops with a message saying so instead of training a random stem.

Loading is strict for the backbone: every backbone tensor must come from the file (BN's
`num_batches_tracked` counters excepted), with its shape, and the file may hold nothing else.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from dginstyle.io import DataError
from dginstyle.segmentation.catalog import MODEL_NAMES

log = logging.getLogger(__name__)

FORMATS = ("mit", "resnet")

#: The public ImageNet checkpoints the paper's backbones start from, as a user downloads them.
#: Rule convert_pretrained (workflow/rules/pretrained.smk) turns `resources/<file>` into
#: `resources/<backbone>.safetensors`, the paths workflow/configs/paper.yaml names. `where`: the
#: release that publishes the file; resnet101_v1c's address is the one mmengine resolves
#: `open-mmlab://resnet101_v1c` to (mmengine/hub/openmmlab.json; a test checks they agree).
PUBLIC_CHECKPOINTS = {
    "mit_b5": {
        "file": "mit_b5.pth",
        "format": "mit",
        "model": "daformer_mitb5",
        "where": "the SegFormer authors' release of ImageNet-1K pretrained MiT weights (NVlabs SegFormer, the file DAFormer and DGInStyle start from)",
    },
    "resnet101_v1c": {
        "file": "resnet101_v1c-e67eebb6.pth",
        "format": "resnet",
        "model": "deeplabv2_r101",
        "where": "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth (open-mmlab's open-mmlab://resnet101_v1c)",
    },
}
RESOURCES = "resources"


def download_path(backbone: str) -> str:
    """Where the user puts the public checkpoint of `backbone` (relative to the working directory)."""
    return f"{RESOURCES}/{PUBLIC_CHECKPOINTS[backbone]['file']}"


def converted_path(backbone: str) -> str:
    """What rule convert_pretrained makes of it."""
    return f"{RESOURCES}/{backbone}.safetensors"


def missing_download_message(backbone: str, key: str = "segmentation.pretrained") -> str:
    """One line: which file to download, from where, and where to put it."""
    entry = PUBLIC_CHECKPOINTS[backbone]
    return (
        f"config key '{key}': {converted_path(backbone)} is converted from {download_path(backbone)}, which is missing: "
        f"download {entry['file']} from {entry['where']} and put it at {download_path(backbone)} "
        f"(relative to the working directory); rule convert_pretrained converts it (docs/weights.md)"
    )

_MIT_OFFICIAL = re.compile(r"^(patch_embed|block|norm)(\d+)\.(.+)$")
_RESNET_KEY = re.compile(
    r"^(conv1\.weight|bn1\.\w+|stem\.\d+\.\w+|layer[1-4]\.\d+\.(conv[123]\.weight|bn[123]\.\w+|downsample\.[01]\.\w+))$"
)
_PREFIXES = ("module.", "backbone.")


def read_public_checkpoint(path: Path) -> dict:
    """The state dict of a public checkpoint (.pth), read weights-only.

    Accepts a plain {name: tensor} dict, or one wrapped under 'state_dict' or 'model' (other
    top-level entries, such as 'meta', are ignored). DataError for anything else.
    """
    import torch

    from dginstyle.compat import load_error_line

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pretrained weights not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a refused object; RuntimeError, EOFError, ... for a broken file
        raise DataError(f"{path}: refused by the weights-only loader or unreadable ({load_error_line(exc)})") from None
    state = loaded
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                state = loaded[key]
                break
    if not isinstance(state, dict) or not state:
        raise DataError(f"{path}: not a state dict of tensors (found {type(state).__name__})")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{path}: not a state dict of tensors ({name!r} is a {type(value).__name__})")
    return _strip_prefixes(state)


def _strip_prefixes(state: dict) -> dict:
    """The same tensors with the wrappers' key prefixes (`_PREFIXES`) removed."""
    out = {}
    for name, value in state.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        out[name] = value
    return out


def convert_mit(state: dict) -> dict:
    """Official (NVlabs SegFormer) MiT keys -> mmseg MixVisionTransformer keys. Keys already in
    mmseg's form (`layers.*`) pass unchanged; the classifier `head.*` is dropped."""
    out: dict = {}
    for key, value in state.items():
        if key.startswith("head.") or key.endswith(".attn.kv.weight") or key.endswith(".attn.kv.bias"):
            continue  # classifier; kv is concatenated with q below
        if key.startswith("layers."):
            out[key] = value
            continue
        match = _MIT_OFFICIAL.match(key)
        if not match:
            raise DataError(f"{key!r}: not a key of the SegFormer MiT checkpoint format (patch_embed<i>., block<i>., norm<i>., head.)")
        kind, stage, rest = match.group(1), int(match.group(2)) - 1, match.group(3)
        if kind == "patch_embed":
            out[f"layers.{stage}.0.{rest.replace('proj.', 'projection.', 1)}"] = value
        elif kind == "norm":
            out[f"layers.{stage}.2.{rest}"] = value
        else:
            block, _, name = rest.partition(".")
            prefix = f"layers.{stage}.1.{block}."
            if name.startswith("attn.q."):
                kv_key = key.replace(".attn.q.", ".attn.kv.")
                if kv_key not in state:
                    raise DataError(f"{key!r} has no {kv_key!r} to concatenate with")
                import torch

                out[prefix + "attn.attn.in_proj_" + name.removeprefix("attn.q.")] = torch.cat([value, state[kv_key]], dim=0)
            elif name.startswith("attn.proj."):
                out[prefix + "attn.attn.out_proj." + name.removeprefix("attn.proj.")] = value
            elif name.startswith(("attn.sr.", "attn.norm.", "norm1.", "norm2.")):
                out[prefix + name] = value
            elif name.startswith("mlp."):
                layer = {"fc1": "0", "dwconv": "1", "fc2": "4"}.get(name.split(".")[1])
                if layer is None:
                    raise DataError(f"{key!r}: unknown MiT feed-forward layer")
                field = name.split(".")[-1]
                if layer in ("0", "4") and field == "weight" and value.dim() == 2:
                    value = value.reshape(*value.shape, 1, 1)  # Linear -> 1x1 conv
                out[f"{prefix}ffn.layers.{layer}.{field}"] = value
            else:
                raise DataError(f"{key!r}: unknown MiT block parameter")
    return out


def resnet_stem(state: dict) -> str:
    """'deep' (ResNetV1c: stem.*), '7x7' (torchvision / ResNet V1b: conv1.weight)."""
    deep, plain = any(k.startswith("stem.") for k in state), "conv1.weight" in state
    if deep == plain:
        raise DataError("ResNet checkpoint: expected either a deep stem (stem.*) or a 7x7 stem (conv1.weight), found " + ("both" if deep else "neither"))
    return "deep" if deep else "7x7"


def convert_resnet(state: dict) -> dict:
    """torchvision or open-mmlab ResNet keys -> mmseg ResNet / ResNetV1c keys (the same names);
    the classifier `fc.*` is dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if not _RESNET_KEY.match(key):
            raise DataError(f"{key!r}: not a key of a torchvision or open-mmlab ResNet checkpoint")
        out[key] = value
    resnet_stem(out)
    return out


def detect_format(state: dict) -> str | None:
    """'mit', 'resnet' or None, from the key names."""
    if any(k.startswith(("patch_embed1.", "block1.", "layers.0.0.projection.")) for k in state):
        return "mit"
    if any(k.startswith(("layer1.", "stem.")) or k == "conv1.weight" for k in state):
        return "resnet"
    return None


def convert_state(state: dict, fmt: str) -> dict:
    if fmt == "mit":
        return convert_mit(state)
    if fmt == "resnet":
        return convert_resnet(state)
    raise DataError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")


def read_backbone_weights(path: Path) -> dict:
    """Backbone weights in our keys from `path`: a .safetensors file (as `convert-pretrained`
    writes) or a public .pth, read weights-only and converted from its detected format."""
    from dginstyle.compat import load_weights

    path = Path(path)
    if path.suffix == ".safetensors":
        state, _ = load_weights(path)
        return _strip_prefixes(state)
    state = read_public_checkpoint(path)
    fmt = detect_format(state)
    if fmt is None:
        raise DataError(f"{path}: neither a MiT nor a ResNet checkpoint (first key {next(iter(state))!r})")
    try:
        return convert_state(state, fmt)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def backbone_mismatch(backbone, state: dict) -> str | None:
    """Why `state` cannot fill `backbone` exactly (one line), or None when it can."""
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return None
    kind = type(backbone).__name__
    if "conv1.weight" in unexpected and any(k.startswith("stem.") for k in missing):
        return (
            f"these are weights of a 7x7-stem ResNet (torchvision layout), whose stem cannot fill the 3-conv deep stem of "
            f"this model's {kind}; use open-mmlab's ImageNet resnet101_v1c checkpoint (convert-pretrained --format resnet)"
        )
    parts = []
    if missing:
        parts.append(f"{len(missing)} backbone tensors missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the backbone (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
    return f"does not fit this model's {kind} backbone: {'; '.join(parts)}"


def load_into_backbone(backbone, state: dict, path: Path) -> int:
    """Copy `state` into `backbone`, strictly (see module docstring); the number of tensors."""
    problem = backbone_mismatch(backbone, state)
    if problem:
        raise DataError(f"{path}: {problem}")
    backbone.load_state_dict(state, strict=False)  # strict but for num_batches_tracked
    return len(state)


def _check_against_model(state: dict, model: str, path: Path) -> None:
    from dginstyle.compat import import_mmseg
    from dginstyle.segmentation import register_modules
    from dginstyle.segmentation.configs import model_config

    import_mmseg()
    register_modules()
    from mmseg.registry import MODELS

    config = model_config(model, (64, 64))
    backbone = MODELS.build(config["backbone"])
    problem = backbone_mismatch(backbone, state)
    if problem:
        raise DataError(f"{path}: {problem}")


def convert_pretrained(src: Path, out: Path, fmt: str, model: str | None = None) -> dict:
    """Convert a public checkpoint to our backbone keys and write it as safetensors; returns a
    summary (tensors written, tensors dropped, ResNet stem)."""
    from dginstyle.compat import save_weights

    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        raise DataError(f"{out}: the output must be a .safetensors file")
    if fmt not in FORMATS:
        raise DataError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    state = read_public_checkpoint(src)
    detected = detect_format(state)
    if detected is not None and detected != fmt:
        raise DataError(f"{src}: this looks like a {detected} checkpoint, not {fmt} (first key {next(iter(state))!r})")
    try:
        converted = convert_state(state, fmt)
    except DataError as exc:
        raise DataError(f"{src}: {exc}") from None
    if model is not None:
        _check_against_model(converted, model, src)
    summary = {"format": fmt, "source": str(src), "tensors": len(converted), "dropped": sorted(k for k in state if k.startswith(("head.", "fc.")))}
    if fmt == "resnet":
        summary["stem"] = resnet_stem(converted)
    save_weights(converted, out, metadata={**summary, "keys": "mmseg backbone (no 'backbone.' prefix)"})
    return summary


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-pretrained",
        help="convert a public ImageNet MiT or ResNet checkpoint (.pth) to our backbone keys (.safetensors)",
        description=(
            "Read a public backbone checkpoint weights-only (a pickle holding anything but tensors is "
            "refused) and write its tensors under mmseg's backbone key names as safetensors, for "
            "`segmentation.pretrained` / `train-segmentation --pretrained`. mit: the SegFormer authors' "
            "mit_b*.pth. resnet: open-mmlab's resnet101_v1c (fits deeplabv2_r101) or torchvision's "
            "resnet101 (7x7 stem: fits a plain mmseg ResNet only, not ResNetV1c)."
        ),
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="the checkpoint's family")
    p.add_argument("--in", dest="src", required=True, type=Path, help="public checkpoint (.pth)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors")
    p.add_argument("--model", default=None, choices=MODEL_NAMES, help="also check that the result fills this model's backbone exactly (e.g. deeplabv2_r101)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    summary = convert_pretrained(args.src, args.out, args.format, model=args.model)
    stem = f", {summary['stem']} stem" if "stem" in summary else ""
    dropped = f"; dropped the classifier ({len(summary['dropped'])} tensors)" if summary["dropped"] else ""
    print(f"{args.out}: {summary['tensors']} {summary['format']} backbone tensors{stem}{dropped}")
