"""ImageNet feature distance (FD) on thing classes, as DAFormer trains (Hoyer et al., CVPR 2022;
docs/method.md section 3: the paper's source-only "DACS" extras).

A frozen copy of the backbone holds the ImageNet weights the model started from. Each training
step adds

    loss_imnet_feat_dist = lambda * mean over thing pixels of || F_model - F_imagenet ||_2

where F are the bottleneck features (the backbone's last stage) of the batch, the norm runs over
the channels of each feature pixel, and the thing pixels are those whose label, downscaled to
the feature size, is a thing class: each feature pixel takes the majority class of the label
pixels it covers, or ignore where that class holds less than `min_ratio` of them (DAFormer's
`downscale_label_ratio`, ratio 0.75). Thing classes: traffic light, traffic sign, person, rider,
car, truck, bus, train, motorcycle, bicycle (train IDs 6, 7, 11-18), lambda 0.005.

How it is wired: `FeatureDistance.attach(model)` wraps the segmentor's `loss` and
`extract_feat` (on the instance) and records, through a forward hook, the backbone call made by
`extract_feat(batch)`: the features the decode head was trained on are reused (no second
forward of the model's backbone), and the frozen copy sees the same input. For EncoderDecoder
that is the batch; for HRDA it is the downscaled context input (HRDA's feature distance, its
feature_scale 0.5), whose features cover the whole label as well. With SHADE (shade.py) the
backbone doubles the batch, [original; hallucinated]: both halves are compared with the copy's
features of the original images, as the DGInStyle release does.
The frozen copy is not a submodule of the model: it is in no state dict (checkpoints and
weights.safetensors hold the trained model alone), in no optimizer group, and the saved
config.py describes the plain model, so `mmseg.apis.init_model` loads a run as before. A
resumed run rebuilds the copy from the same pretrained file. Without pretrained weights the
"ImageNet" copy would be a random network: train-segmentation and the config validation refuse
that combination.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from dginstyle.io import DataError
from dginstyle.labels import IGNORE, NUM_CLASSES

log = logging.getLogger(__name__)

# docs/method.md section 3: ImageNet feature distance on the thing classes 6, 7, 11-18, weight 0.005;
# DAFormer's imnet_feature_dist_scale_min_ratio 0.75.
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
LAMBDA = 0.005
MIN_RATIO = 0.75
LOSS_KEY = "loss_imnet_feat_dist"


def check_settings(weight: float, classes, min_ratio: float) -> tuple[float, tuple[int, ...], float]:
    """The settings, checked (DataError with one line otherwise)."""
    classes = tuple(int(c) for c in classes)
    if not weight > 0:
        raise DataError(f"feature distance lambda must be > 0, got {weight}")
    if not classes or any(c < 0 or c >= NUM_CLASSES for c in classes):
        raise DataError(f"feature distance classes must be train IDs 0..{NUM_CLASSES - 1}, got {list(classes)}")
    if not 0.0 <= min_ratio <= 1.0:
        raise DataError(f"feature distance min ratio must be in [0, 1], got {min_ratio}")
    return float(weight), classes, float(min_ratio)


def downscale_label_ratio(labels, size: tuple[int, int], min_ratio: float, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE):
    """(B, H, W) train IDs -> (B, h, w): per output pixel the majority class of the input pixels
    it covers, `ignore_index` where that is ignore or holds less than `min_ratio` of them.

    DAFormer's downscale_label_ratio (one-hot, average pooling, argmax), with adaptive pooling so
    that a feature map whose size is not exactly H / stride (MiT's padded patch embeddings on an
    odd size) still gets one label per feature pixel; for H = h * s it is DAFormer's s x s pooling.
    """
    import torch
    import torch.nn.functional as F

    labels = labels.long()
    classes = torch.where((labels >= 0) & (labels < num_classes), labels, torch.full_like(labels, num_classes))
    one_hot = F.one_hot(classes, num_classes + 1).permute(0, 3, 1, 2).float()
    share, out = F.adaptive_avg_pool2d(one_hot, tuple(size)).max(dim=1)
    out[out == num_classes] = ignore_index
    out[share < min_ratio] = ignore_index
    return out


def masked_feature_distance(student, teacher, mask):
    """Mean over the masked feature pixels of the channel-wise L2 distance; 0 (and no gradient)
    when the mask is empty (DAFormer's mean of an empty selection would be NaN)."""
    import torch

    distance = torch.linalg.vector_norm(student - teacher, ord=2, dim=1)  # (B, h, w)
    selected = distance[mask]
    return selected.sum() / max(int(selected.numel()), 1)


def frozen_backbone(backbone, state: dict, path: Path):
    """A frozen copy of `backbone` holding the pretrained `state` (strictly, as training loads it):
    eval mode (no dropout, drop path or BN statistics updates), no gradients."""
    from dginstyle.segmentation.pretrained import load_into_backbone

    teacher = copy.deepcopy(backbone)
    load_into_backbone(teacher, state, path)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class FeatureDistance:
    """The FD loss of one segmentor, added to its `loss` by `attach`."""

    def __init__(self, teacher, weight: float = LAMBDA, classes=THING_CLASSES, min_ratio: float = MIN_RATIO):
        self.weight, self.classes, self.min_ratio = check_settings(weight, classes, min_ratio)
        self.teacher = teacher
        self._calls: list = []  # (backbone input, backbone output) of the model's extract_feat(batch), this step
        self._state = {"batch": None, "inside": False}
        self.extra_forwards = 0  # steps whose features had to be recomputed (the model never called extract_feat on the batch)

    # ------------------------------------------------------------------ wiring
    def attach(self, model) -> "FeatureDistance":
        """Wrap `model.loss` and `model.extract_feat` (instance attributes; the class is
        untouched) and hook `model.backbone`: the backbone call made inside
        `extract_feat(batch)` gives the features (and the input the frozen copy sees)."""
        if getattr(model, "_dginstyle_feature_distance", None) is not None:
            raise RuntimeError("feature distance is already attached to this model")
        model.backbone.register_forward_hook(self._record)
        original_loss, original_extract = model.loss, model.extract_feat
        state = self._state

        def extract_feat(inputs):
            if state["batch"] is None or inputs is not state["batch"] or self._calls:
                return original_extract(inputs)
            state["inside"] = True
            try:
                return original_extract(inputs)
            finally:
                state["inside"] = False

        def loss(inputs, data_samples):
            self._calls = []
            state["batch"] = inputs
            try:
                losses = original_loss(inputs, data_samples)
            finally:
                state["batch"] = None
            seen, student = self._features(model, inputs)
            self._calls = []
            losses[LOSS_KEY] = self.loss(seen, student, data_samples)
            return losses

        model.extract_feat = extract_feat
        model.loss = loss
        object.__setattr__(model, "_dginstyle_feature_distance", self)  # not a submodule: never in a state dict
        return self

    def _record(self, module, args, output):
        if self._state["inside"] and args and not self._calls:
            self._calls.append((args[0], output))

    def _features(self, model, inputs):
        """(the input the backbone saw, its last-stage features) from the model's own
        `extract_feat(batch)` (for HRDA: the downscaled context input, as HRDA's feature
        distance); the backbone is run once more on the batch if the model made no such call."""
        if self._calls:
            seen, out = self._calls[0]
            return seen, out[-1]
        if self.extra_forwards == 0:
            log.warning("feature distance: the model never called extract_feat on the batch; computing the backbone features once more per step")
        self.extra_forwards += 1
        return inputs, model.backbone(inputs)[-1]

    # ------------------------------------------------------------------ the loss
    def teacher_features(self, inputs):
        import torch

        teacher = self.teacher
        first = next(teacher.parameters())
        if first.device != inputs.device:
            teacher.to(inputs.device)
        teacher.eval()
        with torch.no_grad():
            return teacher(inputs)[-1].detach()

    def loss(self, inputs, student, data_samples):
        """lambda x masked feature distance of the batch (see module docstring); `inputs` is
        what the backbone saw (the batch, or for HRDA its downscaled context), `student` the
        trained backbone's last-stage features of it. The labels cover the same image."""
        import torch

        teacher = self.teacher_features(inputs)
        labels = torch.stack([s.gt_sem_seg.data.to(inputs.device) for s in data_samples]).squeeze(1)
        # SHADE (shade.py) doubles the batch inside the backbone, [original; hallucinated]: both
        # halves are pulled towards the ImageNet features of the original images, as the
        # DGInStyle release computes its feature distance on cat(img, img) with SHADE on.
        teacher = teacher.repeat(student.shape[0] // teacher.shape[0], 1, 1, 1)
        labels = labels.repeat(student.shape[0] // labels.shape[0], 1, 1)
        small = downscale_label_ratio(labels, tuple(student.shape[-2:]), self.min_ratio)
        mask = torch.isin(small, torch.tensor(self.classes, device=small.device))
        return self.weight * masked_feature_distance(student, teacher, mask)

    def describe(self) -> dict:
        return {"lambda": self.weight, "classes": list(self.classes), "min_ratio": self.min_ratio, "layer": "last backbone stage"}
