"""`dginstyle <stage> ...`: one subcommand per workflow stage, each usable without Snakemake.

Handlers import their modules lazily so that `--help` answers at once. Expected failures
(bad input, bad config) raise `DataError` and end with one line on stderr and exit code 1; so
does a full disk (or quota, or file-size limit), in any stage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from dginstyle import __version__, outputs
from dginstyle.io import DataError, disk_full_message
from dginstyle.parallel import default_threads

REAL_FORMATS = ("gta5", "cityscapes", "bdd100k", "mapillary", "acdc", "darkzurich")
FORMATS = REAL_FORMATS + ("minicity",)


def _workers(value: str) -> int:
    workers = int(value)
    if workers < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return workers


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="convert a dataset (or render the miniature world) into the prepared-dataset contract",
        description=(
            "Convert a real dataset from its official download layout, or render a miniature-world "
            "domain, into <out>/labels/<split>/<stem>.png (Cityscapes train IDs, 255 = ignore), "
            "<out>/images/<split>/, <out>/<split>.txt, class statistics and <out>/manifest.json."
        ),
    )
    p.add_argument("format", choices=FORMATS, help="dataset format")
    p.add_argument("--out", required=True, type=Path, help="output folder (replaced only when complete)")
    p.add_argument("--root", type=Path, help="raw dataset root in its official layout (real formats)")
    p.add_argument(
        "--splits",
        help="real formats: comma-separated split names (default: the format's labelled splits); "
        "minicity: name=count pairs, e.g. train=800,val=200",
    )
    p.add_argument("--name", help="dataset name recorded in the manifest (default: the out folder's name)")
    p.add_argument("--workers", type=_workers, default=None, help="parallel processes (default: $OMP_NUM_THREADS or all CPUs)")
    p.add_argument("--rcs-min-pixels", type=int, default=3000, help="an image counts for a class in RCS when it holds more pixels than this")
    p.add_argument(
        "--size-mismatch",
        choices=("error", "skip"),
        default="error",
        help="a label whose size differs from its image: stop (default) or skip the pair and list it in the manifest",
    )
    mini = p.add_argument_group("minicity (the miniature world)")
    mini.add_argument("--domain", help="minicity domain: source style, a target style, or 'prior'")
    mini.add_argument("--seed", type=int, default=0, help="world seed; the same seed gives byte-identical output")
    mini.add_argument("--size", default="128x64", help="image size WIDTHxHEIGHT")
    mini.add_argument(
        "--thin-objects-px",
        type=float,
        default=0.0,
        help="draw poles at least this many pixels wide (traffic lights 1.5 x 3, signs 2 times that); 0: physical sizes",
    )
    p.set_defaults(handler=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
    from dginstyle.data.prepare import prepare

    prepare(
        fmt=args.format,
        out=args.out,
        root=args.root,
        splits=args.splits,
        name=args.name,
        workers=args.workers or default_threads(),
        rcs_min_pixels=args.rcs_min_pixels,
        size_mismatch=args.size_mismatch,
        domain=args.domain,
        seed=args.seed,
        size=args.size,
        thin_objects_px=args.thin_objects_px,
    )


def _add_contact_sheet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "contact-sheet",
        help="a PNG grid of a prepared dataset: image | colour-coded label per sample",
        description="Draw the first N samples of a prepared dataset split as image | colour-coded label pairs.",
    )
    p.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder")
    p.add_argument("--split", help="split to draw (default: the first one in the manifest)")
    p.add_argument("--count", type=int, default=8, help="number of samples")
    p.add_argument("--out", required=True, type=Path, help="output PNG")
    p.set_defaults(handler=_run_contact_sheet)


def _run_contact_sheet(args: argparse.Namespace) -> None:
    from dginstyle.data.contact_sheet import contact_sheet

    contact_sheet(args.dataset, args.out, split=args.split, count=args.count)


def _add_evaluate_predictions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-predictions",
        help="metrics of a folder of train-ID predictions against a prepared dataset split",
        description=(
            "Dataset-level confusion matrix over the 19 classes (255 ignored), per-class IoU, mIoU "
            "(mean over classes present in the ground truth or the prediction, as mmseg's IoUMetric), "
            "aAcc and pixel counts, written as JSON."
        ),
    )
    p.add_argument("--pred", required=True, type=Path, help="folder of <stem>.png predictions in train IDs")
    p.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder")
    p.add_argument("--split", required=True, help="split to evaluate")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON")
    p.set_defaults(handler=_run_evaluate_predictions)


def _run_evaluate_predictions(args: argparse.Namespace) -> None:
    from dginstyle.metrics import evaluate_prediction_folder

    evaluate_prediction_folder(args.pred, args.dataset, args.split, args.out)


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _add_make_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-table",
        help="a paper table from metrics files, beside the reported numbers (.md, .csv, .tex)",
        description=(
            "Read <metrics>/<experiment>/seed<seed>/<target>.json for every row, seed and column of "
            "the table spec and write <out-prefix>.md, .csv and .tex: mean and sample std over seeds, "
            "the reported row and the difference under each row, and the provenance (config hash, "
            "software versions, date, metric files)."
        ),
    )
    p.add_argument("--spec", required=True, help="one table spec (config 'tables.<name>'): a JSON/YAML file, or an inline JSON object")
    p.add_argument("--metrics", required=True, type=Path, help="metrics folder (results/metrics)")
    p.add_argument("--out-prefix", required=True, type=Path, help="output path without suffix (results/tables/<name>)")
    p.add_argument("--name", help="table name (default: the out-prefix's file name)")
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds (default: the spec's 'seeds')")
    p.add_argument("--config-hash", help="hash of the resolved config, recorded in the table")
    p.add_argument("--reported", type=Path, help="reported-numbers YAML (default: the package's dginstyle/assets/reported.yaml)")
    p.add_argument("--plot", type=Path, help="also write a grouped bar plot (ours vs reported) to this PNG")
    p.set_defaults(handler=_run_make_table)


def _run_make_table(args: argparse.Namespace) -> None:
    from dginstyle.tables import run_cli

    run_cli(args)


def _add_training_curves(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "training-curves",
        help="one PNG of the training curves: U^S, ControlNet, each segmentation run",
        description="Loss curves of the generator stages (loss_curve.json) and of segmentation runs (train_log.jsonl).",
    )
    p.add_argument("--unet-source", type=Path, help="U^S folder (results/generator/unet_source)")
    p.add_argument("--controlnet", type=Path, help="ControlNet folder (results/generator/controlnet)")
    p.add_argument("--runs", type=Path, nargs="*", default=[], help="segmentation run folders (<experiment>/seed<k>)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_training_curves)


def _run_training_curves(args: argparse.Namespace) -> None:
    from dginstyle.curves import training_curves

    training_curves(args.out, args.unet_source, args.controlnet, args.runs)


def _add_readme_results(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "readme-results",
        help="write rendered tables and a figure into the README's results block",
        description="Replace the text between the README's results markers with the given tables (.md) and figure.",
    )
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--tables", type=Path, nargs="+", required=True, help="rendered tables (results/tables/<name>.md)")
    p.add_argument("--figure", type=Path, help="a figure to show (copied to --figure-out)")
    p.add_argument("--figure-out", type=Path, help="committed path of the figure (default: --figure)")
    p.set_defaults(handler=_run_readme_results)


def _run_readme_results(args: argparse.Namespace) -> None:
    from dginstyle.tables import readme_results_cli

    readme_results_cli(args)


# Stages whose modules need torch/diffusers: their `add_cli(sub)` (or the function named after
# a colon) is imported only when that
# stage is the one being run, so `prepare` works in an environment without torch (envs/data.yaml)
# and `dginstyle --help` answers at once.
HEAVY_STAGES = {
    "pretrain-prior": ("dginstyle.diffusion.prior", "train the tiny prior LDM on the captioned prior corpus (miniature world)"),
    "install-prior": ("dginstyle.diffusion.prior:add_install_cli", "install the shipped tiny prior when it was trained on exactly the workflow's request"),
    "finetune-unet": ("dginstyle.diffusion.finetune", "U^P -> U^S: fine-tune the prior UNet on source images with the empty prompt"),
    "train-controlnet": ("dginstyle.diffusion.controlnet", "train the layout ControlNet against the frozen source UNet U^S"),
    "style-swap": ("dginstyle.diffusion.style_swap", "assemble a generator: ControlNet + U^P (plain, rebase) or + U^S (no_swap)"),
    "select-layouts": ("dginstyle.diffusion.layouts", "the generation plan: RCS-chosen source crops and their prompts (JSONL)"),
    "generate": ("dginstyle.diffusion.generate", "one shard of generated pairs (MRLF or plain) from a layout plan"),
    "render-oracle": ("dginstyle.diffusion.oracle", "an upper bound: perfect pairs for a layout plan (diagnostic)"),
    "style-swap-figure": ("dginstyle.diffusion.figures", "the same layouts generated with U^S and with U^P under weather prompts"),
    "presample-source": ("dginstyle.segmentation.presample", "the release's presampled source subset: N distinct images drawn once by rare class sampling"),
    "train-segmentation": ("dginstyle.segmentation.train", "train a segmenter (DAFormer, DeepLabV2, SegFormer) on source + generated data"),
    "evaluate": ("dginstyle.segmentation.evaluate", "mIoU of a trained segmentation run on a prepared dataset split (sliding window)"),
    "quality-control": ("dginstyle.segmentation.quality_control", "filter a generated shard's labels where a source-trained segmenter disagrees"),
    "convert-pretrained": ("dginstyle.segmentation.pretrained", "public ImageNet MiT / ResNet checkpoint (.pth) -> our backbone keys (.safetensors)"),
}


# Stages whose rules declare `gpu=1` (a test keeps this list and the rules in step). On a local
# multi-GPU run each one claims a free device before it starts (dginstyle.devices).
GPU_STAGES = frozenset(
    {
        "pretrain-prior",
        "finetune-unet",
        "train-controlnet",
        "generate",
        "style-swap-figure",
        "train-segmentation",
        "evaluate",
        "quality-control",
    }
)


# What each stage writes: its output arguments and their kinds (dginstyle.outputs: a folder
# replaced whole, a workspace kept across runs, a table prefix, or a file suffix). Every other
# path argument is an input. Checked before a stage starts (a test keeps this table complete).
WRITES = {
    "prepare": {"out": outputs.FOLDER},
    "contact-sheet": {"out": ".png"},
    "evaluate-predictions": {"out": ".json"},
    "make-table": {"out_prefix": outputs.PREFIX, "plot": ".png"},
    "readme-results": {"figure_out": ".png"},  # --readme is edited in place, by design
    "training-curves": {"out": ".png"},
    "install-prior": {"out": outputs.FOLDER},
    "pretrain-prior": {"out": outputs.FOLDER, "checkpoints": outputs.WORKSPACE, "samples": ".png"},
    "finetune-unet": {"out": outputs.FOLDER, "checkpoints": outputs.WORKSPACE},
    "train-controlnet": {"out": outputs.FOLDER, "checkpoints": outputs.WORKSPACE},
    "style-swap": {"out": outputs.FOLDER},
    "select-layouts": {"out": ".jsonl"},
    "generate": {"out": outputs.FOLDER},
    "render-oracle": {"out": outputs.FOLDER},
    "style-swap-figure": {"out": ".png", "numbers": ".json"},
    "presample-source": {"out": outputs.FOLDER},
    "train-segmentation": {"out": outputs.FOLDER, "work_dir": outputs.WORKSPACE},
    "evaluate": {"out": ".json", "save_predictions": outputs.WORKSPACE},
    "quality-control": {"out": outputs.FOLDER},
    "convert-pretrained": {"out": ".safetensors"},
}


def _paths(value) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, Path)]
    return []


def claim_outputs(stage: str, args: argparse.Namespace) -> None:
    """Refuse (DataError, before any work) outputs the stage may not write; then create and mark
    its workspaces, so that a later run knows them for its own."""
    kinds = WRITES[stage]
    written = {getattr(args, name): kind for name, kind in kinds.items() if getattr(args, name, None) is not None}
    read = [path for name, value in vars(args).items() if name not in kinds for path in _paths(value)]
    outputs.check_outputs(stage, written, read)
    for path, kind in written.items():
        if kind == outputs.WORKSPACE:
            outputs.claim_workspace(path, stage)


def _requested_stage(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dginstyle", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dginstyle {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    _add_prepare(sub)
    _add_contact_sheet(sub)
    _add_evaluate_predictions(sub)
    _add_make_table(sub)
    _add_readme_results(sub)
    _add_training_curves(sub)
    requested = _requested_stage(sys.argv[1:] if argv is None else argv)
    for name, (module, help_text) in HEAVY_STAGES.items():
        if name == requested:
            module_name, _, register = module.partition(":")
            getattr(importlib.import_module(module_name), register or "add_cli")(sub)
        else:
            sub.add_parser(name, help=help_text)  # listed in --help; its options load when it runs
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        claim_outputs(args.command, args)
    except DataError as exc:
        print(f"dginstyle {args.command}: error: {exc}", file=sys.stderr)
        return 1
    device = None
    if args.command in GPU_STAGES:  # before the stage touches CUDA; held until this returns
        from dginstyle.devices import claim_for_job

        device = claim_for_job()
    try:
        args.handler(args)
    except Exception as exc:
        full = disk_full_message(exc)
        if full is not None:
            # Every stage writes its outputs into a staging folder (or a pair / a checkpoint
            # at a time) and renames them into place when complete: nothing finished is lost.
            print(
                f"dginstyle {args.command}: error: out of disk space: {full}. Outputs already "
                "complete are untouched; free space and rerun (a stage resumes where it stopped)",
                file=sys.stderr,
            )
            return 1
        if isinstance(exc, DataError):
            print(f"dginstyle {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise
    finally:
        if device is not None:
            device.release()
    return 0
