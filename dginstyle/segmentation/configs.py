"""mmseg 1.x config dicts for our segmentation runs (plain dicts: no mmseg import needed).

`model_config(name)` gives the EncoderDecoder of a model of `catalog.MODELS_` (DAFormer,
DeepLabV2 or SegFormer, each paper-size and tiny); the pipelines follow docs/method.md section 3;
`training_config(...)` assembles the whole Runner config.
"""

from __future__ import annotations

from pathlib import Path

from dginstyle.io import DataError
from dginstyle.labels import IGNORE, NUM_CLASSES
from dginstyle.segmentation import REGISTERED_MODULES
from dginstyle.segmentation.catalog import BACKBONES, DEEPLABV2_DILATIONS, MODEL_NAMES, MODELS_

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def _stage_channels(embed_dims: int, num_heads: list[int]) -> list[int]:
    return [embed_dims * h for h in num_heads]


def _backbone_config(name: str, drop_path_rate: float, norm_cfg: dict) -> tuple[dict, list[int]]:
    """(mmseg backbone config, channels of its four output stages)."""
    b = BACKBONES[name]
    if b["kind"] == "mit":
        config = dict(
            type="MixVisionTransformer",
            in_channels=3,
            embed_dims=b["embed_dims"],
            num_stages=4,
            num_layers=list(b["num_layers"]),
            num_heads=list(b["num_heads"]),
            patch_sizes=[7, 3, 3, 3],
            strides=list(b.get("strides", [4, 2, 2, 2])),
            sr_ratios=list(b.get("sr_ratios", [8, 4, 2, 1])),
            out_indices=(0, 1, 2, 3),
            mlp_ratio=4,
            qkv_bias=True,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=drop_path_rate,
        )
        return config, _stage_channels(b["embed_dims"], b["num_heads"])
    # ResNetV1c as DAFormer's deeplabv2 config: deep stem, stages 3 and 4 dilated instead of
    # strided (output stride 8), BN trained (norm_eval False), torchvision ("pytorch") style.
    config = dict(
        type="ResNetV1c",
        depth=b["depth"],
        stem_channels=b["stem_channels"],
        base_channels=b["base_channels"],
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
    )
    expansion = 4  # Bottleneck (depth >= 50)
    return config, [b["base_channels"] * 2**i * expansion for i in range(4)]


def _head_config(spec: dict, in_channels: list[int], norm_cfg: dict) -> dict:
    common = dict(
        num_classes=NUM_CLASSES,
        align_corners=False,
        ignore_index=IGNORE,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
    )
    if spec["head"] == "daformer":
        return dict(
            type="DAFormerHead", in_channels=in_channels, in_index=[0, 1, 2, 3], input_transform="multiple_select",
            embed_dims=spec["head_channels"], channels=spec["head_channels"], dilations=(1, 6, 12, 18), pool=False,
            dropout_ratio=0.1, norm_cfg=norm_cfg, **common,
        )  # fmt: skip
    if spec["head"] == "segformer":
        # mmseg's SegformerHead: a 1x1 conv per stage to `channels`, upsampled to stride 4,
        # concatenated, fused by a 1x1 conv; dropout 0.1 and a 1x1 classifier.
        return dict(
            type="SegformerHead", in_channels=in_channels, in_index=[0, 1, 2, 3], channels=spec["head_channels"],
            dropout_ratio=0.1, norm_cfg=norm_cfg, **common,
        )  # fmt: skip
    if spec["head"] == "deeplabv2":
        return dict(type="DLV2Head", in_channels=in_channels[3], in_index=3, dilations=DEEPLABV2_DILATIONS, **common)
    raise ValueError(f"unknown head {spec['head']!r}")


def model_config(name: str, crop_size: tuple[int, int], *, window=None, stride=None, drop_path_rate: float = 0.1) -> dict:
    """EncoderDecoder config. `crop_size`, `window`, `stride` are (h, w); window defaults to
    the crop, stride to half the window (docs/method.md section 4)."""
    if name not in MODELS_:
        raise DataError(f"unknown segmentation model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    spec = MODELS_[name]
    window = tuple(window or crop_size)
    stride = tuple(stride or (max(1, window[0] // 2), max(1, window[1] // 2)))
    norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN needs distributed CUDA
    backbone, channels = _backbone_config(spec["backbone"], drop_path_rate, norm_cfg)
    config = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=IGNORE,
            size=tuple(crop_size),
        ),
        pretrained=None,
        backbone=backbone,
        decode_head=_head_config(spec, channels, norm_cfg),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=window, stride=stride),
    )
    return hrda_model_config(config, spec, crop_size) if spec.get("hrda") else config


# output stride of each base head w.r.t. its input (MiT heads at stride 4; the dilated ResNetV1c 8)
HEAD_OUTPUT_STRIDE = {"daformer": 4, "segformer": 4, "deeplabv2": 8}


def hrda_detail_crop(spec: dict, crop_size: tuple[int, int]) -> tuple[int, int]:
    """The detail crop (h, w) of an HRDA model at a training crop (see catalog.HRDA)."""
    hrda = spec["hrda"]
    align = int(round(HEAD_OUTPUT_STRIDE[spec["head"]] / hrda["context_scale"]))
    return tuple(min(c, max(align, int(c * hrda["detail_crop_ratio"]) // align * align)) for c in crop_size)


def hrda_model_config(config: dict, spec: dict, crop_size: tuple[int, int]) -> dict:
    """An EncoderDecoder config of model_config turned into HRDA (HRDAEncoderDecoder + HRDAHead
    wrapping its decode head). The training crop is the context crop before downscaling; the
    sliding-window test config (window = training crop) stays: HRDA runs inside each window.

    The context loss weight follows the DGInStyle release: 0 when the detail crop is smaller
    than the training crop (the context prediction is supervised through the fused loss outside
    the detail crop), the detail weight when it covers the whole crop."""
    hrda = spec["hrda"]
    detail = hrda_detail_crop(spec, tuple(crop_size))
    stride = HEAD_OUTPUT_STRIDE[spec["head"]]
    return dict(
        config,
        type="HRDAEncoderDecoder",
        decode_head=dict(
            type="HRDAHead",
            base_head=config["decode_head"],
            output_stride=stride,
            hr_loss_weight=hrda["hr_loss_weight"],
            lr_loss_weight=hrda["hr_loss_weight"] if detail == tuple(crop_size) else 0.0,
            attention_classwise=hrda["attention_classwise"],
            attention_embed_dims=spec["head_channels"] or 256,
        ),
        context_scale=hrda["context_scale"],
        hr_crop_size=detail,
        crop_coord_divisible=int(round(stride / hrda["context_scale"])),
        hr_slide_inference=True,
        hr_slide_batch=hrda["hr_slide_batch"],
    )


def source_pipeline(crop_size: tuple[int, int], resize: tuple[int, int] | None) -> list[dict]:
    """Source: resize (keep ratio, `resize` = (w, h); None = native), random crop with
    cat_max_ratio 0.75, flip, photometric distortion. Normalisation is in the data preprocessor.

    PhotoMetricDistortion is the colour augmentation of the paper's "SegFormer with colour
    augmentation" row. The DGInStyle release applies it to every model alike (its "gengtaCAug"
    data configs serve the DAFormer, SegFormer and DeepLabV2 runs), and so do these pipelines.
    """
    steps: list[dict] = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    if resize is not None:
        steps.append(dict(type="Resize", scale=tuple(resize), keep_ratio=True))
    steps += [
        dict(type="RandomCrop", crop_size=tuple(crop_size), cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    return steps


def generated_pipeline(crop_size: tuple[int, int], resize: tuple[int, int] | None = None) -> list[dict]:
    """Generated pairs used as they are (optionally resized, the 1024 setting), flip, photometric
    distortion. The RandomCrop is a no-op when the generated image has the crop size (the
    paper's setting) and only keeps batches collatable when it is larger."""
    steps: list[dict] = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    if resize is not None:
        steps.append(dict(type="Resize", scale=tuple(resize), keep_ratio=False))
    steps += [
        dict(type="RandomCrop", crop_size=tuple(crop_size)),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    return steps


def prepared_dataset_config(dataset: Path, split: str, pipeline: list[dict], test_mode: bool = False, subset: Path | None = None) -> dict:
    config = dict(type="PreparedSegDataset", dataset_dir=str(Path(dataset).resolve()), split=split, pipeline=pipeline, test_mode=test_mode)
    if subset is not None:
        config["subset"] = str(Path(subset).resolve())
    return config


def generated_dataset_config(shards: list[Path], pipeline: list[dict]) -> dict:
    return dict(type="GeneratedSegDataset", shards=[str(Path(s).resolve()) for s in shards], pipeline=pipeline)


def mixed_dataset_config(
    source: Path,
    generated_shards: list[Path],
    *,
    split: str = "train",
    crop_size: tuple[int, int] = (512, 512),
    source_resize: tuple[int, int] | None = None,
    generated_resize: tuple[int, int] | None = None,
    generated_repeat: int = 1,
    source_subset: Path | None = None,
) -> dict:
    """Source + generated data concatenated (mmengine ConcatDataset): every sample of both
    appears once per epoch, so the mix follows their sizes (docs/method.md section 3).
    `generated_repeat` > 1 lists each generated pair that many times per epoch (RepeatDataset),
    for a set too small to hold the paper's share of generated samples. `source_subset`: only
    the source images of a presampled subset (`dginstyle presample-source`, the release's 512
    setting). Without generated shards, the source dataset alone."""
    if generated_repeat < 1:
        raise DataError(f"generated_repeat must be >= 1 (got {generated_repeat})")
    src = prepared_dataset_config(source, split, source_pipeline(crop_size, source_resize), subset=source_subset)
    if not generated_shards:
        return src
    gen = generated_dataset_config(list(generated_shards), generated_pipeline(crop_size, generated_resize))
    if generated_repeat > 1:
        gen = dict(type="RepeatDataset", dataset=gen, times=int(generated_repeat))
    return dict(type="ConcatDataset", datasets=[src, gen])


MIXED_PRECISION = ("no", "fp16", "bf16")


def optim_wrapper_type(mixed_precision: str) -> dict:
    """mmengine's optimizer wrapper for a precision: plain float32, or automatic mixed precision."""
    if mixed_precision == "no":
        return dict(type="OptimWrapper")
    return dict(type="AmpOptimWrapper", dtype={"fp16": "float16", "bf16": "bfloat16"}[mixed_precision], loss_scale="dynamic")


def training_config(
    *,
    source: Path,
    generated: list[Path],
    work_dir: Path,
    model: str,
    iterations: int,
    batch_size: int,
    crop_size: tuple[int, int],
    learning_rate: float,
    weight_decay: float,
    warmup_iterations: int,
    poly_power: float,
    head_lr_mult: float = 10.0,
    seed: int,
    source_resize: tuple[int, int] | None = None,
    generated_resize: tuple[int, int] | None = None,
    generated_repeat: int = 1,
    checkpoint_interval: int = 1000,
    log_interval: int = 50,
    num_workers: int = 0,
    source_subset: Path | None = None,
    mixed_precision: str = "no",
) -> dict:
    """The full mmengine Runner config (crop_size is (h, w); resizes are (w, h)).

    mixed_precision "fp16" / "bf16": mmengine's AmpOptimWrapper (autocast, dynamic loss
    scaling; CUDA only). The release trains in float32 ("no")."""
    if mixed_precision not in MIXED_PRECISION:
        raise DataError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    if iterations < 1:
        raise DataError("iterations must be >= 1")
    warmup = max(0, min(int(warmup_iterations), iterations))
    schedulers = []
    if warmup > 0:
        schedulers.append(dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup))
    if warmup < iterations:
        schedulers.append(dict(type="PolyLR", eta_min=0.0, power=poly_power, by_epoch=False, begin=warmup, end=iterations))
    dataloader = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        sampler=dict(type="InfiniteSampler", shuffle=True),
        dataset=mixed_dataset_config(
            source, generated, crop_size=crop_size, source_resize=source_resize, generated_resize=generated_resize,
            generated_repeat=generated_repeat, source_subset=source_subset,
        ),  # fmt: skip
    )
    return dict(
        default_scope="mmseg",
        custom_imports=dict(imports=list(REGISTERED_MODULES), allow_failed_imports=False),
        work_dir=str(work_dir),
        model=model_config(model, crop_size),
        train_dataloader=dataloader,
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iterations, val_interval=iterations + 1),
        optim_wrapper=dict(
            **optim_wrapper_type(mixed_precision),
            optimizer=dict(type="AdamW", lr=learning_rate, betas=(0.9, 0.999), weight_decay=weight_decay),
            # One schedule for every model, as the DAFormer / HRDA / DGInStyle code base trains
            # DAFormer, SegFormer and DeepLabV2 alike (AdamW, head lr x head_lr_mult = 10, poly
            # with warm-up).
            # No weight decay on norms and positional blocks: these keys match MiT's LayerNorms
            # only; ResNet's BN layers (bn1, stem.1, downsample.1) keep it, as in that code base.
            paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=float(head_lr_mult)), "pos_block": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}),
        ),
        param_scheduler=schedulers,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # mmengine's CheckpointHook, but a checkpoint is complete under its final name and the
            # last_checkpoint pointer moves only after it is (checkpoint_hook.py)
            checkpoint=dict(type="DurableCheckpointHook", by_epoch=False, interval=checkpoint_interval, max_keep_ckpts=2, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="gloo")),
        log_processor=dict(by_epoch=False),
        log_level="WARNING",
        randomness=dict(seed=seed, deterministic=False),
        launcher="none",
        # Recorded for the run's readers; not mmengine keys.
        dginstyle=dict(
            model=model, crop_size=list(crop_size), source=str(source), generated=[str(g) for g in generated],
            source_subset=None if source_subset is None else str(source_subset),
        ),  # fmt: skip
    )
