"""SHADE style hallucination (Zhao, Zhong, Zhao, Sebe, Lee, "Style-Hallucinated Dual Consistency
Learning for Domain Generalized Semantic Segmentation", ECCV 2022), the option of DGInStyle's
HRDA row (docs/method.md section 3: HRDA is trained with RCS, T = 0.01, and SHADE style hallucination).

What it does, per training step:
  * Style Hallucination Module (SHM), after the backbone's first stage: each feature map x is
    normalised by its own channel statistics (mean, std over the spatial positions, detached) and
    given a new style, x_new = (x - mu(x)) / sigma(x) * sigma_new + mu_new, where
    (mu_new, sigma_new) = w @ (basis means, basis stds) and w ~ Dirichlet(alpha, ..., alpha),
    one draw per image. The batch is doubled there, [x; x_new], and goes through the rest of the
    network; the labels are doubled with it, so the usual cross-entropy covers both halves.
  * Style consistency (SC): lambda_SC x JS(p, p_new), the Jensen-Shannon divergence between the
    softmax predictions of the original and the hallucinated half, averaged over pixels.
  * Retrospection consistency (RC, optional): lambda_RC x the mean, over thing-class pixels, of
    the channel-mean squared difference between the last-stage features (both halves) and those
    of a frozen ImageNet copy of the backbone on the original images.
  * Basis styles: the (mean, std) style vectors of the training images at the SHM's position are
    collected with the current weights (eval mode, no gradients), and K of them are picked by
    farthest point sampling; at the start and every `interval` iterations.

Settings and where they come from (SHADE's code: github.com/HeliosZhao/SHADE, train.py, loss.py,
network/style_hallucination.py, network/deepv3.py; HRDA's port, which the DGInStyle segmentation
release uses: github.com/lhoyer/HRDA, experiments.py `shade`, mix_transformer.py,
style_hallucination_hook.py; DGInStyle's release: yurujaja/DGInStyle-SegModel, dacs.py):
  * Where: SHADE (ResNet) after `layer0` = the stem (conv, BN, ReLU, max-pool), before layer1;
    HRDA / DGInStyle (MiT) after stage 1 (after its output LayerNorm, 64 channels on MiT-B5).
    Here: the same two places (`insertion_point`). Only while training; inference is unchanged.
  * K = 64 basis styles (SHADE's --base_style_num; "the same as the style dim", 64 channels
    there and on MiT-B5). With fewer collected styles than K, all of them are the basis.
  * alpha = 0.0156 (about 1/64): SHADE's --concentration_coeff default, and the value the HRDA /
    DGInStyle release passes. (The brief that asked for this module guessed about 0.1; the
    released code says 0.0156. Most draws then weight one or two basis styles heavily.)
  * Statistics: unbiased std + 1e-7 (torch's default std, SHADE's epsilon), detached.
  * lambda_SC = 10 (SHADE --sc_weight; the release's style_consistency_lambda), on the decode
    head's logits at its own resolution (the release's 'decode.logits', HRDA's fused logits);
    SHADE takes them upsampled to the image, which differs only by the interpolation.
  * Basis refresh: SHADE every 3 epochs over the source set; the HRDA / DGInStyle release at the
    start and every 4000 iterations over the whole training source (its training pipeline, no
    RCS), 2 images per batch, on the full-resolution training crops. Here: the release's rule,
    over the training data of the run (source + generated, concatenated, without RCS),
    optionally capped at `basis_samples` images per refresh (None: all, as the release).
  * Retrospection: SHADE --rc_layers layer4 (the last stage), --rc_weights 1.0, squared
    difference averaged over channels, on the thing pixels of DAFormer's feature distance
    (train IDs 6, 7, 11-18, label downscaled by majority with ratio 0.75), both halves against
    the ImageNet features of the original images, 0 when no thing pixel is present.
    DGInStyle's release has no such term of its own: its retrospection is the ImageNet feature
    distance (DAFormer's, lambda 0.005) computed on both halves (feature_distance.py does that
    when the batch is doubled). paper.yaml therefore sets shade_retrospection_weight: 0 and
    keeps the feature distance on; SHADE alone uses weight 1. Either needs pretrained weights.
  * HRDA: both backbone calls of a step (context and detail crop) are hallucinated, each with
    its own Dirichlet draw, as in the release (the SHM sits inside the backbone there).

How it is wired (as feature_distance.py): `StyleHallucination.attach(model)` registers a forward
hook on the insertion module (returns the doubled features while a training `loss` runs), wraps
`model.loss` (doubles the data samples, adds the SC and RC losses) and `model.decode_head.forward`
(records the logits) on the instance, and records the backbone's first call of the step for
the RC. The basis lives in this object and in the training checkpoints (so a resumed run has
the same basis), never in the model: the model's state dict, `weights.safetensors` and the saved
`config.py` are the plain mmseg model, which `mmseg.apis.init_model` loads as before.
"""

from __future__ import annotations

import logging

from dginstyle.io import DataError
from dginstyle.segmentation.feature_distance import MIN_RATIO, THING_CLASSES, downscale_label_ratio

log = logging.getLogger(__name__)

BASIS_STYLES = 64
CONCENTRATION = 0.0156
BASIS_INTERVAL = 4000
SC_WEIGHT = 10.0
RC_WEIGHT = 1.0
EPS = 1e-7  # SHADE's: added to the std
SC_KEY = "loss_style_consistency"
RC_KEY = "loss_retrospection"
CHECKPOINT_KEY = "dginstyle_shade_basis"


def check_settings(basis_styles: int, concentration: float, interval: int, basis_samples, sc_weight: float, rc_weight: float) -> dict:
    """The settings, checked (DataError with one line otherwise)."""
    if int(basis_styles) < 1:
        raise DataError(f"SHADE basis styles must be >= 1, got {basis_styles}")
    if not concentration > 0:
        raise DataError(f"SHADE Dirichlet concentration must be > 0, got {concentration}")
    if int(interval) < 1:
        raise DataError(f"SHADE basis interval must be >= 1 iteration, got {interval}")
    if basis_samples is not None and int(basis_samples) < 1:
        raise DataError(f"SHADE basis samples must be >= 1 (or none for all), got {basis_samples}")
    if sc_weight < 0 or rc_weight < 0:
        raise DataError(f"SHADE loss weights must be >= 0, got style consistency {sc_weight}, retrospection {rc_weight}")
    return dict(
        basis_styles=int(basis_styles), concentration=float(concentration), interval=int(interval),
        basis_samples=None if basis_samples is None else int(basis_samples), sc_weight=float(sc_weight), rc_weight=float(rc_weight),
    )  # fmt: skip


def insertion_point(backbone):
    """(module whose output the SHM restyles, its layout): MiT's stage-1 output norm (tokens,
    'nlc'; HRDA's place) or ResNet's max-pool after the stem ('nchw'; SHADE's layer0)."""
    from mmseg.models.backbones import MixVisionTransformer, ResNet

    if isinstance(backbone, MixVisionTransformer):
        return backbone.layers[0][2], "nlc"
    if isinstance(backbone, ResNet):
        return backbone.maxpool, "nchw"
    raise DataError(f"SHADE supports MiT and ResNet backbones, not {type(backbone).__name__}")


def _spatial_dims(layout: str) -> tuple[int, ...]:
    return (1,) if layout == "nlc" else (2, 3)


def channel_style(x, layout: str = "nchw"):
    """(mean, std) per image and channel, each (B, C): the style SHADE mixes (unbiased std)."""
    dims = _spatial_dims(layout)
    return x.mean(dim=dims), x.std(dim=dims)


def _as_map(stat, layout: str):
    """(B, C) -> broadcastable over the features of `layout`."""
    return stat[:, None, :] if layout == "nlc" else stat[:, :, None, None]


def hallucinate(x, basis_mean, basis_std, weights, layout: str = "nchw"):
    """x restyled to the mixed styles: (x - mu) / (sigma + eps) * (w @ basis_std) + w @ basis_mean,
    with x's own statistics detached (SHADE: the gradient flows through the normalised content).
    x: (B, C, H, W) or (B, N, C); basis_*: (K, C); weights: (B, K)."""
    mean, std = channel_style(x, layout)
    mean, std = mean.detach(), std.detach() + EPS
    normalised = (x - _as_map(mean, layout)) / _as_map(std, layout)
    new_mean, new_std = weights @ basis_mean, weights @ basis_std  # (B, C)
    return normalised * _as_map(new_std, layout) + _as_map(new_mean, layout)


def js_divergence(logits_a, logits_b):
    """Jensen-Shannon divergence between the softmax predictions of two (B, C, H, W) logit maps,
    averaged over pixels: (KL(p_a || m) + KL(p_b || m)) / 2, m = (p_a + p_b) / 2 clamped to
    [1e-7, 1] before its log (SHADE's style consistency, before its weight)."""
    import torch.nn.functional as F

    classes = logits_a.shape[1]
    p_a = F.softmax(logits_a.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, classes)
    p_b = F.softmax(logits_b.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, classes)
    log_m = ((p_a + p_b) / 2).clamp(1e-7, 1).log()
    return (F.kl_div(log_m, p_a, reduction="batchmean") + F.kl_div(log_m, p_b, reduction="batchmean")) / 2


def retrospection_distance(student, teacher, mask):
    """Mean over the masked feature pixels of the channel-mean squared difference (SHADE's
    masked_feat_dist); 0 (with a zero gradient) when the mask is empty."""
    squared = ((student - teacher) ** 2).mean(dim=1)  # (B, h, w)
    selected = squared[mask]
    return selected.sum() / max(int(selected.numel()), 1)


def farthest_point_sampling(points, count: int, generator=None) -> list[int]:
    """Indices of `count` rows of points (N, D) picked greedily, each the farthest (squared L2)
    from those picked so far, from a random first one; all N when N <= count."""
    import torch

    n = points.shape[0]
    if n <= count:
        return list(range(n))
    first = int(torch.randint(0, n, (), generator=generator).item())
    picked = [first]
    nearest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(count - 1):
        index = int(torch.argmax(nearest).item())
        picked.append(index)
        nearest = torch.minimum(nearest, ((points - points[index]) ** 2).sum(dim=1))
    return picked


class _Collected(Exception):
    """Raised by the SHM hook in collection mode: the rest of the backbone is not needed."""


class StyleHallucination:
    """SHADE for one segmentor: `attach(model)`, then `refresh_basis(...)` before training."""

    def __init__(self, teacher=None, *, basis_styles: int = BASIS_STYLES, concentration: float = CONCENTRATION,
                 sc_weight: float = SC_WEIGHT, rc_weight: float = RC_WEIGHT, classes=THING_CLASSES, min_ratio: float = MIN_RATIO):  # fmt: skip
        if rc_weight > 0 and teacher is None:
            raise DataError("SHADE's retrospection consistency needs the frozen ImageNet backbone (pretrained weights); set its weight to 0 to train without it")
        self.teacher = teacher if rc_weight > 0 else None
        self.basis_styles, self.concentration = int(basis_styles), float(concentration)
        self.sc_weight, self.rc_weight = float(sc_weight), float(rc_weight)
        self.classes, self.min_ratio = tuple(int(c) for c in classes), float(min_ratio)
        self.basis_mean = self.basis_std = None  # (K, C) each; set by set_basis
        self.refreshes = 0
        self.last_weights = None  # the Dirichlet draws of the latest hallucination (B, K)
        self._module = self._layout = None
        self._active = False  # True while a training loss runs: the SHM doubles the batch
        self._collect: list | None = None  # style vectors of a collection pass
        self._logits = None  # decode head output of this step
        self._first_call = None  # (input, last-stage features) of the backbone's first call this step

    # ------------------------------------------------------------------ wiring
    def attach(self, model) -> "StyleHallucination":
        """Hook the model (see the module docstring). Build any frozen copy of the backbone
        before this: the SHM hook only acts on this model's own module, but keeping copies
        hook-free is simpler to reason about."""
        if getattr(model, "_dginstyle_shade", None) is not None:
            raise RuntimeError("SHADE is already attached to this model")
        self._module, self._layout = insertion_point(model.backbone)
        self._module.register_forward_hook(self._shm)
        model.backbone.register_forward_hook(self._record_backbone)
        head = model.decode_head
        original_forward, original_loss = head.forward, model.loss

        def head_forward(*args, **kwargs):
            out = original_forward(*args, **kwargs)
            if self._active:
                self._logits = out["fused"] if isinstance(out, dict) else out  # HRDA: the fused logits
            return out

        def loss(inputs, data_samples):
            if not model.training:
                return original_loss(inputs, data_samples)
            if self.basis_mean is None:
                raise RuntimeError("SHADE has no basis styles yet: call refresh_basis (or set_basis) before training")
            self._logits, self._first_call = None, None
            self._active = True
            try:
                # the labels of [original; hallucinated]: the same samples twice
                losses = original_loss(inputs, list(data_samples) + list(data_samples))
            finally:
                self._active = False
            logits = self._logits
            half = logits.shape[0] // 2
            losses[SC_KEY] = self.sc_weight * js_divergence(logits[:half], logits[half:])
            if self.rc_weight > 0:
                losses[RC_KEY] = self.rc_weight * self.retrospection(data_samples)
            self._logits = self._first_call = None
            return losses

        head.forward = head_forward
        model.loss = loss
        object.__setattr__(model, "_dginstyle_shade", self)  # not a submodule: never in a state dict
        return self

    def _shm(self, module, args, output):
        import torch

        if module is not self._module:
            return None
        if self._collect is not None:
            mean, std = channel_style(output, self._layout)
            self._collect.append(torch.cat([mean, std], dim=1).detach())
            raise _Collected
        if not self._active:
            return None
        return torch.cat([output, self.hallucinated(output)], dim=0)

    def _record_backbone(self, module, args, output):
        if self._active and self._first_call is None and args:
            self._first_call = (args[0], output[-1])

    # ------------------------------------------------------------------ the SHM
    def sample_weights(self, batch: int, device):
        """Dirichlet(alpha, ..., alpha) weights over the basis, one row per image."""
        import torch

        k = self.basis_mean.shape[0]
        concentration = torch.full((k,), self.concentration, device=device)
        return torch.distributions.Dirichlet(concentration).sample((batch,))

    def hallucinated(self, x):
        """x restyled by freshly drawn basis mixes (kept in `last_weights`)."""
        weights = self.sample_weights(x.shape[0], x.device).to(x.dtype)
        self.last_weights = weights
        return hallucinate(x, self.basis_mean.to(x), self.basis_std.to(x), weights, self._layout)

    # ------------------------------------------------------------------ basis styles
    def collect_styles(self, model, batches, max_samples: int | None = None):
        """(N, 2C) style vectors [mean, std] at the SHM's position of the images of `batches`
        (mmengine data batches, passed through the model's data preprocessor), eval mode, no
        gradients; at most `max_samples` images."""
        import torch

        was_training = model.training
        model.eval()
        self._collect = []
        count = 0
        try:
            with torch.no_grad():
                for data in batches:
                    inputs = model.data_preprocessor(data, True)["inputs"]
                    try:
                        model.backbone(inputs)
                    except _Collected:
                        pass
                    count += inputs.shape[0]
                    if max_samples is not None and count >= max_samples:
                        break
            styles = torch.cat(self._collect) if self._collect else None
        finally:
            self._collect = None
            model.train(was_training)
        if styles is None:
            raise DataError("SHADE: no training images to collect basis styles from")
        return styles[:max_samples] if max_samples is not None else styles

    def set_basis(self, styles, generator=None) -> None:
        """Pick the basis from (N, 2C) style vectors by farthest point sampling."""
        picked = styles[farthest_point_sampling(styles.float(), self.basis_styles, generator)]
        channels = picked.shape[1] // 2
        self.basis_mean, self.basis_std = picked[:, :channels].clone(), picked[:, channels:].clone()

    def refresh_basis(self, model, batches, max_samples: int | None = None, seed: int = 0) -> int:
        """Collect the styles of `batches` and pick a new basis; returns the styles collected."""
        import torch

        styles = self.collect_styles(model, batches, max_samples)
        self.set_basis(styles, torch.Generator().manual_seed(int(seed) + self.refreshes))
        self.refreshes += 1
        return int(styles.shape[0])

    def state(self) -> dict:
        return {"mean": self.basis_mean.cpu(), "std": self.basis_std.cpu(), "refreshes": self.refreshes}

    def load_state(self, state: dict) -> None:
        self.basis_mean, self.basis_std = state["mean"].clone(), state["std"].clone()
        self.refreshes = int(state["refreshes"])

    # ------------------------------------------------------------------ retrospection
    def retrospection(self, data_samples):
        """SHADE's RC on the backbone's first call of the step (the batch; HRDA: its context
        input, as the feature distance): last-stage features of both halves against the frozen
        ImageNet copy's features of the original images, on thing-class pixels."""
        import torch

        inputs, student = self._first_call
        teacher = self.teacher
        if next(teacher.parameters()).device != inputs.device:
            teacher.to(inputs.device)
        teacher.eval()
        with torch.no_grad():
            reference = teacher(inputs)[-1].detach()
        reference = reference.repeat(student.shape[0] // reference.shape[0], 1, 1, 1)
        labels = torch.stack([s.gt_sem_seg.data.to(inputs.device) for s in data_samples]).squeeze(1)
        labels = labels.repeat(student.shape[0] // labels.shape[0], 1, 1)
        small = downscale_label_ratio(labels, tuple(student.shape[-2:]), self.min_ratio)
        mask = torch.isin(small, torch.tensor(self.classes, device=small.device))
        return retrospection_distance(student, reference, mask)

    def describe(self) -> dict:
        return {
            "insertion": "MiT stage 1 output" if self._layout == "nlc" else "ResNet stem (after max-pool)",
            "basis_styles": self.basis_styles, "concentration": self.concentration,
            "style_consistency_weight": self.sc_weight, "retrospection_weight": self.rc_weight,
            "retrospection_classes": list(self.classes) if self.rc_weight > 0 else None,
        }  # fmt: skip


def make_hook(shade: StyleHallucination, loader_config: dict, interval: int, basis_samples: int | None, seed: int):
    """The mmengine hook that refreshes the basis (at the start of training when it has none,
    then whenever the iteration is a multiple of `interval`) and keeps it in the checkpoints.

    loader_config: an mmengine dataloader config over the training data without RCS (the
    release collects from its training source without RCS)."""
    from mmengine.hooks import Hook

    class ShadeHook(Hook):
        priority = "NORMAL"

        def __init__(self):
            self.loader = None
            self.collected: list[int] = []

        def _refresh(self, runner):
            from mmengine.runner import Runner

            if self.loader is None:
                self.loader = Runner.build_dataloader(loader_config, seed=seed)
            if hasattr(self.loader.sampler, "set_epoch"):
                self.loader.sampler.set_epoch(shade.refreshes)  # another order (and subset) each time
            count = shade.refresh_basis(runner.model, self.loader, basis_samples, seed=seed)
            self.collected.append(count)
            log.info("SHADE basis: %d styles from %d images at iteration %d", shade.basis_mean.shape[0], count, runner.iter)

        def after_load_checkpoint(self, runner, checkpoint):
            if CHECKPOINT_KEY in checkpoint:  # a resumed run keeps the basis it had
                shade.load_state(checkpoint[CHECKPOINT_KEY])

        def before_save_checkpoint(self, runner, checkpoint):
            if shade.basis_mean is not None:
                checkpoint[CHECKPOINT_KEY] = shade.state()

        def before_train(self, runner):
            if shade.basis_mean is None:
                self._refresh(runner)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if runner.iter > 0 and runner.iter % interval == 0:
                self._refresh(runner)

    return ShadeHook()
