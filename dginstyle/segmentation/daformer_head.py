"""The DAFormer decode head (Hoyer, Dai, Van Gool, "DAFormer", CVPR 2022, section 3.2).

Written for mmsegmentation 1.x from the paper's description; registered in mmseg's MODELS.
"""

from __future__ import annotations

from dginstyle.compat import import_mmseg

import_mmseg(init_default_scope=False)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402


class SeparableASPP(nn.Module):
    """ASPP-like context fusion with depthwise-separable atrous convolutions.

    One branch per dilation: a 1x1 conv for dilation 1, a depthwise-separable 3x3 conv with
    that dilation otherwise; optionally an image-pooling branch (global average -> 1x1 conv,
    broadcast back). The branch outputs are concatenated and fused by a 3x3 conv bottleneck.
    """

    def __init__(self, in_channels, channels, dilations=(1, 6, 12, 18), pool=False, norm_cfg=None, act_cfg=dict(type="ReLU")):
        super().__init__()
        self.branches = nn.ModuleList()
        for dilation in dilations:
            if dilation == 1:
                branch = ConvModule(in_channels, channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
            else:
                branch = DepthwiseSeparableConvModule(
                    in_channels, channels, 3, dilation=dilation, padding=dilation, norm_cfg=norm_cfg, act_cfg=act_cfg
                )
            self.branches.append(branch)
        self.image_pool = None
        if pool:
            self.image_pool = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
            )
        count = len(dilations) + (1 if pool else 0)
        self.bottleneck = ConvModule(count * channels, channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.image_pool is not None:
            pooled = self.image_pool(x)
            outs.insert(0, pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.bottleneck(torch.cat(outs, dim=1))


@MODELS.register_module()
class DAFormerHead(BaseDecodeHead):
    """DAFormer's decoder: multi-level embedding + context-aware feature fusion.

    From the paper (DAFormer, sec. 3.2, Fig. 3): the features F_i of the four MiT encoder
    stages (strides 4, 8, 16, 32) are each embedded to `embed_dims` channels by a 1x1 conv
    ("MLP" embedding, no norm, no activation), bilinearly upsampled to the stride-4 level and
    concatenated. Unlike SegFormer's purely local fusion, they are fused *context-aware* by an
    ASPP-like module whose parallel 3x3 branches are depthwise-separable atrous convs with
    dilations 1, 6, 12, 18 (the dilation-1 branch a 1x1 conv; global image pooling off in the
    paper's final configuration, optional here), followed by a 3x3 conv bottleneck to
    `channels` and the classifier (dropout + 1x1 conv, from BaseDecodeHead). Paper values:
    embed_dims = channels = 256, BN + ReLU in the fusion.

    Args:
        embed_dims: channels of each level's embedding.
        dilations: atrous rates of the fusion branches.
        pool: add the ASPP image-pooling branch.
        Other arguments as `BaseDecodeHead` (use `in_index=[0, 1, 2, 3]`,
        `input_transform='multiple_select'`, `in_channels` = the four stages' channels).
    """

    def __init__(self, embed_dims=256, dilations=(1, 6, 12, 18), pool=False, **kwargs):
        kwargs.setdefault("input_transform", "multiple_select")
        kwargs.setdefault("in_index", [0, 1, 2, 3])
        super().__init__(**kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError("DAFormerHead fuses several encoder levels: input_transform must be 'multiple_select'")
        self.embed_dims = embed_dims
        self.embed_layers = nn.ModuleList(nn.Conv2d(c, embed_dims, kernel_size=1) for c in self.in_channels)
        self.fuse_layer = SeparableASPP(
            embed_dims * len(self.in_channels),
            self.channels,
            dilations=tuple(dilations),
            pool=pool,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg,
        )

    def forward(self, inputs):
        feats = self._transform_inputs(inputs)
        size = feats[0].shape[2:]
        embedded = []
        for feat, embed in zip(feats, self.embed_layers):
            x = embed(feat)
            if x.shape[2:] != size:
                x = resize(x, size=size, mode="bilinear", align_corners=self.align_corners)
            embedded.append(x)
        fused = self.fuse_layer(torch.cat(embedded, dim=1))
        return self.cls_seg(fused)
