"""HRDA's multi-resolution decode head (Hoyer, Dai, Van Gool, "HRDA: Context-Aware
High-Resolution Domain-Adaptive Semantic Segmentation", ECCV 2022, sections 3.2-3.3).

Written for mmsegmentation 1.x from the paper and the public HRDA release's behaviour;
registered in mmseg's MODELS. The segmentor that feeds it is `HRDAEncoderDecoder`
(dginstyle/segmentation/hrda_encoder_decoder.py).
"""

from __future__ import annotations

import math
from copy import deepcopy

from dginstyle.compat import import_mmseg

import_mmseg(init_default_scope=False)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmcv.cnn import ConvModule  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.losses import accuracy  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

import dginstyle.segmentation.daformer_head  # noqa: E402,F401  (registers DAFormerHead)
import dginstyle.segmentation.dlv2_head  # noqa: E402,F401  (registers DLV2Head)


def scale_box(box, size, grid) -> tuple[int, int, int, int]:
    """A (y1, y2, x1, x2) box in pixels of an image of `size` (h, w) mapped onto a `grid` (h, w)
    covering the same image (exact when the coordinates are multiples of the grid's stride)."""
    (h, w), (gh, gw) = size, grid
    y1, y2, x1, x2 = box
    return (int(round(y1 * gh / h)), int(round(y2 * gh / h)), int(round(x1 * gw / w)), int(round(x2 * gw / w)))


def _attention_head_config(head: dict, embed_dims: int, classwise: bool) -> dict:
    """The scale-attention head: the base head's architecture (HRDA: "the same decoder
    architecture as the segmentation head"), with `embed_dims` channels for DAFormer, one output
    per class (`classwise`) or a single one."""
    cfg = deepcopy(dict(head))
    if cfg["type"] == "DAFormerHead":
        # the ASPP context fusion is replaced by a 1x1 conv below; build a one-branch one
        cfg.update(embed_dims=embed_dims, channels=embed_dims, dilations=(1,), pool=False)
    if not classwise:
        cfg.update(out_channels=1, threshold=0.5)  # threshold: silences mmseg's binary warning (unused)
    return cfg


@MODELS.register_module()
class HRDAHead(BaseDecodeHead):
    """A base decode head applied to a low-resolution context crop and to high-resolution
    detail crop(s), fused by a learned scale attention.

    With f the base head, a the attention head (sigmoid output), c the context features (the
    image downscaled by the segmentor's context scale) and d the detail features:

        y_c = f(c),  y_d = f(d),  a_c = sigmoid(a(c))
        fused = up(a_c) * insert(y_d) + up((1 - a_c) * y_c)

    on the grid of the base head's output stride over the full-resolution image. `insert` places
    each detail prediction at its crop box (averaging overlapping slide windows at inference);
    in training the attention is zeroed outside the detail crop, so the fused prediction is the
    upsampled context prediction there (HRDA, sec. 3.2).

    Losses (HRDA eq. 7; DGInStyle's release): (1 - lr_loss_weight - hr_loss_weight) * CE(fused)
    + hr_loss_weight * CE(y_d, labels cropped to the detail box) + lr_loss_weight * CE(y_c),
    named `loss_ce`, `hr.loss_ce`, `lr.loss_ce` (the last only when lr_loss_weight > 0).
    The release sets lr_loss_weight = 0 whenever the detail crop is smaller than the training
    crop (the context prediction is supervised directly through the fused loss outside the
    detail crop) and = hr_loss_weight when it covers the whole crop.

    Args:
        base_head: config of the base head (DAFormerHead, DLV2Head, ...); its num_classes,
            loss_decode, ignore_index, align_corners are this head's too.
        output_stride: stride of the base head's output w.r.t. its input image (DAFormer on MiT
            4, DeepLabV2 on dilated ResNet 8).
        hr_loss_weight: weight of the detail loss (HRDA: 0.1).
        lr_loss_weight: weight of the context loss (see above).
        attention_classwise: one attention map per class (HRDA's setting) or one for all.
        attention_embed_dims: DAFormer attention head width (HRDA: 256).
    """

    def __init__(
        self,
        base_head: dict,
        output_stride: int,
        hr_loss_weight: float = 0.1,
        lr_loss_weight: float = 0.0,
        attention_classwise: bool = True,
        attention_embed_dims: int = 256,
        init_cfg=None,
    ):
        base = deepcopy(dict(base_head))
        if not (0 <= hr_loss_weight and 0 <= lr_loss_weight and hr_loss_weight + lr_loss_weight < 1):
            raise ValueError("HRDAHead: loss weights must be >= 0 and sum to less than 1")
        super().__init__(
            in_channels=base["in_channels"],
            channels=1,
            num_classes=base["num_classes"],
            dropout_ratio=0.0,
            in_index=base.get("in_index", -1),
            input_transform=base.get("input_transform"),
            loss_decode=deepcopy(base.get("loss_decode", dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))),
            ignore_index=base.get("ignore_index", 255),
            align_corners=base.get("align_corners", False),
            init_cfg=init_cfg,
        )
        del self.conv_seg  # the base head and the attention head classify
        self.output_stride = int(output_stride)
        self.hr_loss_weight = float(hr_loss_weight)
        self.lr_loss_weight = float(lr_loss_weight)
        self.head = MODELS.build(base)
        self.scale_attention = MODELS.build(_attention_head_config(base, attention_embed_dims, attention_classwise))
        if base["type"] == "DAFormerHead":
            # HRDA's DAFormer attention head fuses its embedded levels by a 1x1 conv (+ norm, act)
            att = self.scale_attention
            att.fuse_layer = ConvModule(attention_embed_dims * len(att.in_channels), att.channels, 1, norm_cfg=att.norm_cfg, act_cfg=att.act_cfg)

    # ------------------------------------------------------------------------------ forward

    def get_scale_attention(self, context_feats) -> torch.Tensor:
        """Sigmoid scale attention [B, C or 1, h, w] on the context prediction's grid."""
        return torch.sigmoid(self.scale_attention(context_feats))

    def fused_grid(self, image_size) -> tuple[int, int]:
        """The fusion grid: the base head's output grid over the full-resolution image."""
        return (math.ceil(image_size[0] / self.output_stride), math.ceil(image_size[1] / self.output_stride))

    def insert_detail(self, detail_logits: torch.Tensor, boxes, image_size, batch_size: int) -> torch.Tensor:
        """Detail logits (crop-major: crop i = rows i*B..(i+1)*B) placed at their boxes on the
        fused grid; overlaps averaged, zero where no box lies."""
        grid = self.fused_grid(image_size)
        out = detail_logits.new_zeros((batch_size, detail_logits.shape[1], *grid))
        count = detail_logits.new_zeros((1, 1, *grid))
        for i, box in enumerate(boxes):
            y1, y2, x1, x2 = scale_box(box, image_size, grid)
            part = detail_logits[i * batch_size : (i + 1) * batch_size]
            if tuple(part.shape[2:]) != (y2 - y1, x2 - x1):  # only for window sizes off the stride
                part = resize(part, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=self.align_corners)
            pad = (x1, grid[1] - x2, y1, grid[0] - y2)
            out = out + F.pad(part, pad)
            count = count + F.pad(part.new_ones((1, 1, y2 - y1, x2 - x1)), pad)
        return out / count.clamp(min=1)

    def forward(self, inputs: dict) -> dict:
        """inputs: `context` (features of the downscaled image), `detail` (features of the
        detail crops) or `detail_logits` (their base-head logits), `boxes` (each crop's box in
        full-resolution pixels), `image_size` (h, w at full resolution), `restrict_attention`
        (True in training: attention only inside the boxes).

        Returns dict(fused, context, detail, attention): fused logits on the fused grid, the
        context and detail logits, the (masked) attention on the context grid.
        """
        context_feats, boxes, image_size = inputs["context"], list(inputs["boxes"]), tuple(inputs["image_size"])
        lr_seg = self.head(context_feats)
        hr_seg = inputs["detail_logits"] if inputs.get("detail_logits") is not None else self.head(inputs["detail"])
        att = self.get_scale_attention(context_feats)
        if inputs.get("restrict_attention", False):
            mask = att.new_zeros((1, 1, *att.shape[2:]))
            for box in boxes:
                y1, y2, x1, x2 = scale_box(box, image_size, att.shape[2:])
                mask[:, :, y1:y2, x1:x2] = 1
            att = att * mask
        grid = self.fused_grid(image_size)
        up_lr = resize((1 - att) * lr_seg, size=grid, mode="bilinear", align_corners=self.align_corners)
        up_att = resize(att, size=grid, mode="bilinear", align_corners=self.align_corners)
        fused = up_att * self.insert_detail(hr_seg, boxes, image_size, lr_seg.shape[0]) + up_lr
        return dict(fused=fused, context=lr_seg, detail=hr_seg, attention=att)

    # ------------------------------------------------------------------------------- losses

    def _seg_losses(self, logits: torch.Tensor, label: torch.Tensor, weight: float) -> dict:
        """BaseDecodeHead.loss_by_feat on a given label [B, 1, H, W], loss terms times `weight`."""
        logits = resize(logits, size=label.shape[2:], mode="bilinear", align_corners=self.align_corners)
        label = label.squeeze(1)
        losses = {}
        for loss_decode in self.loss_decode if isinstance(self.loss_decode, torch.nn.ModuleList) else [self.loss_decode]:
            value = loss_decode(logits, label, weight=None, ignore_index=self.ignore_index) * weight
            losses[loss_decode.loss_name] = losses[loss_decode.loss_name] + value if loss_decode.loss_name in losses else value
        losses["acc_seg"] = accuracy(logits, label, ignore_index=self.ignore_index)
        return losses

    def loss(self, inputs: dict, batch_data_samples, train_cfg) -> dict:
        if len(inputs["boxes"]) != 1:
            raise ValueError("HRDAHead trains on one detail crop per batch")
        out = self.forward(inputs)
        label = self._stack_batch_gt(batch_data_samples)
        losses = self._seg_losses(out["fused"], label, 1.0 - self.hr_loss_weight - self.lr_loss_weight)
        y1, y2, x1, x2 = inputs["boxes"][0]
        if self.hr_loss_weight > 0:
            hr = self._seg_losses(out["detail"], label[:, :, y1:y2, x1:x2], self.hr_loss_weight)
            losses.update({f"hr.{k}": v for k, v in hr.items()})
        if self.lr_loss_weight > 0:
            lr = self._seg_losses(out["context"], label, self.lr_loss_weight)
            losses.update({f"lr.{k}": v for k, v in lr.items()})
        return losses

    def predict(self, inputs: dict, batch_img_metas, test_cfg) -> torch.Tensor:
        return self.predict_by_feat(self.forward(inputs)["fused"], batch_img_metas)
