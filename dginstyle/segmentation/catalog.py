"""The segmentation models by name: which backbone and which decode head each one is.

Plain data and the standard library only, so that the config validation (dginstyle.config,
run by the Snakefile) can check model names and pretrained weights without importing torch or
mmseg. `dginstyle.segmentation.configs.model_config(name)` turns an entry into an mmseg config.

Every paper-size model has a tiny variant built by the same code (same backbone class, same
head class), only narrower and shallower, for the miniature world and the tests.
"""

from __future__ import annotations

# Backbones. `kind` picks the mmseg class family: "mit" = MixVisionTransformer, "resnet" =
# ResNetV1c (3-conv deep stem; dilations (1, 1, 2, 4), strides (1, 2, 1, 1): output stride 8,
# as the DAFormer / HRDA / DGInStyle code base builds DeepLabV2).
BACKBONES = {
    "mit_b5": dict(kind="mit", embed_dims=64, num_layers=[3, 6, 40, 3], num_heads=[1, 2, 5, 8]),
    "mit_tiny": dict(kind="mit", embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 5, 8]),
    # mit_tiny with attention spatial reductions (4, 2, 1, 1) instead of (8, 4, 2, 1): MiT's
    # reduction is a conv with kernel = stride = ratio, so (8, 4, 2, 1) needs inputs of at least
    # 32 px, and the tiny HRDA's context inputs are 16 px (a 32 px crop or window at scale 0.5)
    "mit_tiny_sr4": dict(kind="mit", embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 5, 8], sr_ratios=[4, 2, 1, 1]),
    # mit_tiny with a stride-2 patch embedding in stage 1 (strides 2, 2, 2, 2 instead of 4, 2, 2,
    # 2): output stride 2, for the miniature world's 1-4 px poles, lights and signs, which a
    # stride-4 head sees as a fraction of one output cell
    "mit_tiny_os2": dict(kind="mit", embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 5, 8], strides=[2, 2, 2, 2]),
    "resnet101_v1c": dict(kind="resnet", depth=101, stem_channels=64, base_channels=64),
    # depth 50 keeps the Bottleneck blocks of ResNet-101 (depth 18/34 would switch to BasicBlock)
    "resnet_tiny_v1c": dict(kind="resnet", depth=50, stem_channels=16, base_channels=8),
}

# Model name -> backbone and decode head. `head_channels`: DAFormer's embed/fusion width or
# SegFormer's MLP width (768 at B5, as the SegFormer authors' B5 decoder); DeepLabV2's head
# maps straight to class logits and has none.
MODELS_ = {
    "daformer_mitb5": dict(backbone="mit_b5", head="daformer", head_channels=256),
    "daformer_tiny": dict(backbone="mit_tiny", head="daformer", head_channels=32),
    "daformer_tiny_os2": dict(backbone="mit_tiny_os2", head="daformer", head_channels=32),
    "deeplabv2_r101": dict(backbone="resnet101_v1c", head="deeplabv2", head_channels=None),
    "deeplabv2_tiny": dict(backbone="resnet_tiny_v1c", head="deeplabv2", head_channels=None),
    "segformer_mitb5": dict(backbone="mit_b5", head="segformer", head_channels=768),
    "segformer_tiny": dict(backbone="mit_tiny", head="segformer", head_channels=32),
}

# HRDA (Hoyer et al., ECCV 2022) around the DAFormer and DeepLabV2 networks: the same backbone
# and base head, wrapped by HRDAEncoderDecoder / HRDAHead (configs.hrda_model_config). The
# context crop is the whole training crop downscaled by `context_scale`; the detail crop is
# `detail_crop_ratio` of the training crop at full resolution, rounded down to a multiple of the
# head's output stride / context_scale (8 on MiT, 16 on the dilated ResNet) so that it lies on
# whole cells of both prediction grids. DGInStyle's HRDA rows (its release, "hrda1-512-0.1"):
# training crop 1024, context 0.5 (-> 512), detail crop 512, detail loss weight 0.1, class-wise
# attention; with `crop_size: 1024` these settings give exactly that. Tiny variants: the
# default miniature crop 64 gives a 32 context and a 32 detail crop, the smoke crop 32 gives 16
# and 16; the tiny DAFormer-HRDA uses mit_tiny_sr4 (above) so that MiT takes 16 px inputs.
# `hr_slide_batch`: detail crops per backbone call at inference (None: all at once).
HRDA = dict(context_scale=0.5, detail_crop_ratio=0.5, hr_loss_weight=0.1, attention_classwise=True)
MODELS_.update({
    "hrda_daformer_mitb5": dict(MODELS_["daformer_mitb5"], hrda=dict(HRDA, hr_slide_batch=8)),
    "hrda_daformer_tiny": dict(MODELS_["daformer_tiny"], backbone="mit_tiny_sr4", hrda=dict(HRDA, hr_slide_batch=None)),
    "hrda_deeplabv2_r101": dict(MODELS_["deeplabv2_r101"], hrda=dict(HRDA, hr_slide_batch=8)),
    "hrda_deeplabv2_tiny": dict(MODELS_["deeplabv2_tiny"], hrda=dict(HRDA, hr_slide_batch=None)),
})  # fmt: skip
MODEL_NAMES = tuple(MODELS_)

# DeepLabV2's atrous rates as the DGInStyle release trains it ("dlv2red" in its experiments.py,
# from DAFormer's deeplabv2red config): 6 and 12 only. Earlier UDA code (AdaptSegNet) returned
# inside its loop over (6, 12, 18, 24), so only the first two branches ever existed, and the
# later papers kept that to stay comparable. `DLV2Head` defaults to all four.
DEEPLABV2_DILATIONS = (6, 12)


def backbone_of(model: str) -> str:
    """The backbone name of a model (KeyError for an unknown model)."""
    return MODELS_[model]["backbone"]
