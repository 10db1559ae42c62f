"""HRDA's multi-resolution segmentor (Hoyer, Dai, Van Gool, "HRDA", ECCV 2022, section 3),
for supervised training on source + generated data as DGInStyle trains it (no target data, no
pseudo-labels).

Written for mmsegmentation 1.x (EncoderDecoder's loss / predict / inference / slide_inference
with SegDataSample lists); registered in mmseg's MODELS. Its decode head is `HRDAHead`.
"""

from __future__ import annotations

from dginstyle.compat import import_mmseg

import_mmseg(init_default_scope=False)

import torch  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from dginstyle.segmentation.hrda_head import HRDAHead  # noqa: E402


def slide_boxes(size, crop, stride) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) windows of `crop` (h, w) every `stride` over an image of `size`, the
    last one flush with the border, as mmseg's slide inference cuts them (a crop larger than the
    image becomes the image)."""
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    ch, cw = min(ch, h), min(cw, w)
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            boxes.append((y2 - ch, y2, x2 - cw, x2))
    return boxes


@MODELS.register_module()
class HRDAEncoderDecoder(EncoderDecoder):
    """Context crop at low resolution + detail crop(s) at full resolution, one shared backbone.

    Training (`loss`): the batch of training crops (H, W) is downscaled by `context_scale`
    (HRDA: 0.5) into the context input; a detail crop of `hr_crop_size` (HRDA / DGInStyle: 512
    inside a 1024 training crop) is cut at full resolution at a random position whose
    coordinates are multiples of `crop_coord_divisible` (default: the head's output stride /
    context_scale, 8 for DAFormer on MiT, so that the crop box falls on whole cells of both
    prediction grids and the fusion is exact), one position per batch. Backbone and head run on
    both; HRDAHead fuses them and computes the losses.

    Inference (`encode_decode`, called per window by mmseg's slide or whole inference): the
    context prediction on the whole window downscaled, the detail predictions on
    `hr_crop_size` windows sliding with half that stride over the full-resolution window
    (`hr_slide_inference`; otherwise on the whole window at full resolution), batched through
    the backbone at most `hr_slide_batch` crops at a time (None: all at once), fused with the
    attention over the whole window and resized to it.

    `extract_feat` gives the context (low-resolution) features: HRDA's feature distance is
    computed on them (its feature_scale 0.5).
    """

    def __init__(
        self,
        backbone: dict,
        decode_head: dict,
        context_scale: float = 0.5,
        hr_crop_size=(512, 512),
        crop_coord_divisible: int | None = None,
        hr_slide_inference: bool = True,
        hr_slide_batch: int | None = None,
        neck: dict | None = None,
        auxiliary_head: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        data_preprocessor: dict | None = None,
        pretrained: str | None = None,
        init_cfg=None,
    ):
        if auxiliary_head is not None:
            raise ValueError("HRDAEncoderDecoder has no auxiliary head")
        super().__init__(
            backbone=backbone, decode_head=decode_head, neck=neck, auxiliary_head=None, train_cfg=train_cfg,
            test_cfg=test_cfg, data_preprocessor=data_preprocessor, pretrained=pretrained, init_cfg=init_cfg,
        )  # fmt: skip
        if not isinstance(self.decode_head, HRDAHead):
            raise ValueError("HRDAEncoderDecoder needs an HRDAHead decode head")
        if not 0 < float(context_scale) <= 1:
            raise ValueError("context_scale must be in (0, 1]")
        self.context_scale = float(context_scale)
        crop = (hr_crop_size, hr_crop_size) if isinstance(hr_crop_size, int) else tuple(hr_crop_size)
        self.hr_crop_size = (int(crop[0]), int(crop[1]))
        self.crop_coord_divisible = int(crop_coord_divisible or round(self.decode_head.output_stride / self.context_scale))
        self.hr_slide_inference = bool(hr_slide_inference)
        self.hr_slide_batch = int(hr_slide_batch) if hr_slide_batch else None

    # ---------------------------------------------------------------------------- features

    def extract_unscaled_feat(self, inputs: torch.Tensor):
        x = self.backbone(inputs)
        return self.neck(x) if self.with_neck else x

    def context_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """The image downscaled by context_scale (bilinear, as HRDA)."""
        if self.context_scale == 1:
            return inputs
        h, w = inputs.shape[2:]
        size = (max(1, int(h * self.context_scale)), max(1, int(w * self.context_scale)))
        return resize(inputs, size=size, mode="bilinear", align_corners=self.align_corners)

    def extract_feat(self, inputs: torch.Tensor):
        """Backbone features of the context (downscaled) input."""
        return self.extract_unscaled_feat(self.context_input(inputs))

    # ----------------------------------------------------------------------------- training

    def sample_detail_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """A random detail crop box (y1, y2, x1, x2) in a (h, w) training crop, its offsets
        multiples of crop_coord_divisible (both ends of the range reachable)."""
        ch, cw = min(self.hr_crop_size[0], h), min(self.hr_crop_size[1], w)
        d = self.crop_coord_divisible
        y1 = int(torch.randint(0, (h - ch) // d + 1, ()).item()) * d
        x1 = int(torch.randint(0, (w - cw) // d + 1, ()).item()) * d
        return (y1, y1 + ch, x1, x1 + cw)

    def loss(self, inputs: torch.Tensor, data_samples) -> dict:
        h, w = inputs.shape[2:]
        box = self.sample_detail_box(h, w)
        y1, y2, x1, x2 = box
        head_inputs = dict(
            context=self.extract_feat(inputs),
            detail=self.extract_unscaled_feat(inputs[:, :, y1:y2, x1:x2]),
            boxes=[box],
            image_size=(h, w),
            restrict_attention=True,
        )
        return self._decode_head_forward_train(head_inputs, data_samples)

    # ---------------------------------------------------------------------------- inference

    def detail_boxes(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        if not self.hr_slide_inference:
            return [(0, h, 0, w)]
        stride = (max(1, self.hr_crop_size[0] // 2), max(1, self.hr_crop_size[1] // 2))
        return slide_boxes((h, w), self.hr_crop_size, stride)

    def detail_logits(self, inputs: torch.Tensor, boxes) -> torch.Tensor:
        """Base-head logits of every detail crop, crop-major ([crops * B, C, h, w])."""
        crops = torch.cat([inputs[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes], dim=0)
        step = self.hr_slide_batch or crops.shape[0]
        return torch.cat([self.decode_head.head(self.extract_unscaled_feat(crops[i : i + step])) for i in range(0, crops.shape[0], step)])

    def multires_forward(self, inputs: torch.Tensor) -> dict:
        """HRDAHead.forward's outputs for whole images (inference: no crop restriction)."""
        h, w = inputs.shape[2:]
        boxes = self.detail_boxes(h, w)
        head_inputs = dict(
            context=self.extract_feat(inputs),
            detail_logits=self.detail_logits(inputs, boxes),
            boxes=boxes,
            image_size=(h, w),
            restrict_attention=False,
        )
        return self.decode_head.forward(head_inputs)

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas) -> torch.Tensor:
        """Fused logits of each (window) image, at its size."""
        fused = self.multires_forward(inputs)["fused"]
        return resize(fused, size=inputs.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def _forward(self, inputs: torch.Tensor, data_samples=None) -> torch.Tensor:
        """Fused logits on the head's output grid (mode='tensor')."""
        return self.multires_forward(inputs)["fused"]
