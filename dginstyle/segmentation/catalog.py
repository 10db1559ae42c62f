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
    "deeplabv2_r101": dict(backbone="resnet101_v1c", head="deeplabv2", head_channels=None),
    "deeplabv2_tiny": dict(backbone="resnet_tiny_v1c", head="deeplabv2", head_channels=None),
    "segformer_mitb5": dict(backbone="mit_b5", head="segformer", head_channels=768),
    "segformer_tiny": dict(backbone="mit_tiny", head="segformer", head_channels=32),
}
MODEL_NAMES = tuple(MODELS_)

# DeepLabV2's atrous rates as the DGInStyle release trains it ("dlv2red" in its experiments.py,
# from DAFormer's deeplabv2red config): 6 and 12 only. Earlier UDA code (AdaptSegNet) returned
# inside its loop over (6, 12, 18, 24), so only the first two branches ever existed, and the
# later papers kept that to stay comparable. `DLV2Head` defaults to all four.
DEEPLABV2_DILATIONS = (6, 12)


def backbone_of(model: str) -> str:
    """The backbone name of a model (KeyError for an unknown model)."""
    return MODELS_[model]["backbone"]


def backbone_kind(backbone: str) -> str:
    """'mit' or 'resnet': which public checkpoint format (`convert-pretrained --format`) fits it."""
    return BACKBONES[backbone]["kind"]
