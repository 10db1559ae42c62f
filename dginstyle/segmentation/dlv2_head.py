"""The DeepLabV2 decode head (Chen et al., "DeepLab", TPAMI 2018), as domain adaptation and
generalisation papers use it with ResNet-101 (AdaptSegNet, DAFormer, HRDA, DGInStyle).

Written for mmsegmentation 1.x; registered in mmseg's MODELS.
"""

from __future__ import annotations

from dginstyle.compat import import_mmseg

import_mmseg(init_default_scope=False)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from mmcv.cnn import ConvModule  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402


@MODELS.register_module()
class DLV2Head(BaseDecodeHead):
    """ASPP as a sum: parallel 3x3 atrous convs on the last backbone stage, each mapping
    straight to class logits, summed.

    Unlike DeepLabV3's ASPP there is no BN, no activation, no image pooling, no concatenation,
    no bottleneck and no separate classifier; there is no dropout either (the DeepLabV2 classifier
    of AdaptSegNet and DAFormer applies none). The branches start from N(0, 0.01) weights, as in
    those code bases.

    Args:
        dilations: atrous rate of each branch (DeepLabV2: 6, 12, 18, 24; the DGInStyle release
            uses 6, 12: see dginstyle.segmentation.catalog.DEEPLABV2_DILATIONS).
        Other arguments as `BaseDecodeHead` (one input: `in_channels` an int, `in_index=-1` or 3);
        `channels`, `dropout_ratio` and `norm_cfg` are fixed by this head.
    """

    def __init__(self, dilations=(6, 12, 18, 24), **kwargs):
        for fixed in ("channels", "dropout_ratio", "norm_cfg"):
            if fixed in kwargs:
                raise ValueError(f"DLV2Head sets {fixed} itself (its branches map straight to class logits)")
        kwargs.setdefault("init_cfg", dict(type="Normal", std=0.01, override=dict(name="aspp_modules")))
        # BaseDecodeHead builds a 1x1 classifier from `channels`; this head has its own, so
        # the unused one is removed below.
        super().__init__(channels=1, dropout_ratio=0.0, norm_cfg=None, **kwargs)
        del self.conv_seg
        if not isinstance(self.in_channels, int):
            raise ValueError("DLV2Head reads one backbone stage: in_channels must be an int")
        self.dilations = tuple(dilations)
        self.aspp_modules = nn.ModuleList(
            ConvModule(self.in_channels, self.out_channels, 3, dilation=d, padding=d, conv_cfg=self.conv_cfg, norm_cfg=None, act_cfg=None)
            for d in self.dilations
        )

    def branch_outputs(self, inputs) -> list[torch.Tensor]:
        """Each branch's logits (their sum is the head's output)."""
        x = self._transform_inputs(inputs)
        return [branch(x) for branch in self.aspp_modules]

    def forward(self, inputs):
        outs = self.branch_outputs(inputs)
        logits = outs[0]
        for out in outs[1:]:
            logits = logits + out
        return logits
