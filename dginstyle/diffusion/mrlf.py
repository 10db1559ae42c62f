"""Multi-resolution Latent Fusion (MRLF, docs/method.md 1.4): the sampler, as one explicit loop.

    label L (H x W train IDs) --one_hot--> C (20 x H x W, {0,1}, channel 19 = ignore)
    label L --large_region_mask--> M (H x W bool: 8-connected components of one class, area > A)

    pass 1   z ~ N(0, I) at (H/f, W/f); DDIM + CFG + ControlNet(C) -> decode -> x_lo (H x W)
    bridge   x_lo --Lanczos x scale--> VAE encode (posterior sample * scaling_factor) -> z_init
    pass 2   z ~ N(0, I) at (scale H/f, scale W/f); condition C upsampled x scale (nearest);
             at every DDIM step t:
               1. every view (a `window` x `window` latent tile, `stride` apart, last row and
                  column included) is denoised: ControlNet + UNet + CFG on its tile;
               2. overlapping views are averaged uniformly (MultiDiffusion);
               3. fusion: z <- m * add_noise(z_init, fresh noise, t_fuse) + (1 - m) * z,
                  m = M at the latent grid (nearest), t_fuse = t - 1 ("previous_tick", the
                  released code) or the next DDIM timestep ("next_step").
             decode -> Lanczos down to H x W -> the image.
    plain    pass 1 only.

Two implementations of one pass-2 step, which give the same result:
  * `loop`: as the released code: per view, one ControlNet + UNet call per CFG half, one DDIM
    step on the view's tile, then the tiles' x_{t-1} are averaged. Kept as the reference.
  * `batched` (default): the views of a step go through ControlNet and UNet in batched calls,
    `max_batch` views (x 2 for the CFG pair, uncond and cond in the SAME batch) per call; the
    views' guided noise predictions are averaged into one latent-sized prediction and ONE DDIM
    step is taken for the whole latent. This is exact: for a fixed x_t the DDIM update
    (eta = 0) x_{t-1} = sqrt(a')/sqrt(a) (x_t - sqrt(1-a) eps) + sqrt(1-a') eps is affine in
    eps with the same coefficients at every pixel, and every view sees the same x_t values, so
    the average of the views' updates equals the update with the averaged eps.
    Views whose latent window lies wholly inside m are skipped (`skip_masked_views`): every
    pixel they touch is overwritten by the fusion at the same step, so they cannot change the
    result. (Pixels covered only by skipped views get eps = 0 before being overwritten.)

Randomness: one torch.Generator on the CPU (seeded by the pair's seed) draws, in this order,
pass-1 noise, the VAE posterior noise, pass-2 noise and one fresh fusion noise per step; the
draws do not depend on the implementation or skipping, so those switches leave images alone.
On CUDA the models run in fp16/bf16 (PyTorch SDPA attention, diffusers' default processor);
latents and the DDIM arithmetic stay float32. On the CPU everything is float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from dginstyle.labels import IGNORE, NUM_CLASSES
from dginstyle.diffusion.models import NUM_CONDITION_CHANNELS, check_prediction_type, epsilon_from_prediction

FUSION_TIMESTEPS = ("previous_tick", "next_step")
MODES = ("mrlf", "plain")
# DDIM timestep spacing: "leading" (SD 1.5's scheduler, the paper's: t = 951..1 at 20 steps) or
# "trailing" (t = 999 down; Lin et al., WACV 2024): with few steps "leading" starts far below
# t = 999 (876 at 8 steps), treats pure noise as partly denoised and draws washed-out images.
TIMESTEP_SPACINGS = ("leading", "trailing")
VIEW_IMPLEMENTATIONS = ("batched", "loop")


@dataclass(frozen=True)
class MRLFSettings:
    """Sampler settings (defaults: the paper's dataset generation at 512 px, docs/method.md 1.4)."""

    mode: str = "mrlf"  # "mrlf" | "plain" (pass 1 only)
    scale: int = 2  # pass-2 resolution factor (any integer >= 1)
    steps: int = 20  # DDIM steps of each pass
    guidance_scale: float = 7.5
    controlnet_scale: float = 1.0
    window: int = 64  # view size in latent pixels (clamped to the latent)
    stride: int = 8  # view stride in latent pixels
    area_threshold: int = 20000  # A, in pixels at crop resolution
    fusion_timestep: str = "previous_tick"  # "previous_tick" (t - 1, released) | "next_step"
    timestep_spacing: str = "leading"  # "leading" (SD 1.5, the paper) | "trailing" (see TIMESTEP_SPACINGS)
    max_batch: int = 8  # views per batched ControlNet/UNet call (x 2 for CFG)
    views: str = "batched"  # "batched" | "loop" (released-code-style reference)
    skip_masked_views: bool = True  # skip views wholly inside the fusion mask (exact)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.fusion_timestep not in FUSION_TIMESTEPS:
            raise ValueError(f"fusion_timestep must be one of {FUSION_TIMESTEPS}, got {self.fusion_timestep!r}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}")
        if self.views not in VIEW_IMPLEMENTATIONS:
            raise ValueError(f"views must be one of {VIEW_IMPLEMENTATIONS}, got {self.views!r}")
        for name in ("scale", "steps", "window", "stride", "max_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SamplerStats:
    """What one image cost: model calls (forward invocations) and samples (batch rows)."""

    unet_calls: int = 0
    unet_samples: int = 0
    views: int = 0  # pass-2 views per step
    views_skipped: int = 0  # summed over steps
    views_run: int = 0  # summed over steps (pass 1 counts one view per step)
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- label -> inputs


def one_hot_condition(label: np.ndarray) -> torch.Tensor:
    """(H, W) train IDs -> (1, 20, H, W) float one-hot; channel 19 holds ignore (255)."""
    label = np.asarray(label)
    bad = (label >= NUM_CLASSES) & (label != IGNORE)
    if bad.any():
        raise ValueError(f"label holds values {sorted(np.unique(label[bad]).tolist())} that are neither train IDs nor {IGNORE}")
    channel = np.where(label == IGNORE, NUM_CONDITION_CHANNELS - 1, label).astype(np.int64)
    one_hot = F.one_hot(torch.from_numpy(channel), NUM_CONDITION_CHANNELS)  # H, W, 20
    return one_hot.permute(2, 0, 1).unsqueeze(0).float()


EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def large_region_mask(label: np.ndarray, area_threshold: float) -> np.ndarray:
    """M: pixels of 8-connected single-class components (any class but 255) of area > A."""
    label = np.asarray(label)
    mask = np.zeros(label.shape, dtype=bool)
    for cls in np.unique(label):
        if cls == IGNORE:
            continue
        components, count = ndimage.label(label == cls, structure=EIGHT_CONNECTED)
        if count == 0:
            continue
        areas = np.bincount(components.ravel())
        keep = areas > area_threshold
        keep[0] = False  # background of this class mask
        mask |= keep[components]
    return mask


def view_windows(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Latent views (y0, x0, h, w) of size min(window, side), `stride` apart, covering the
    whole (height, width) latent: the last row and column are always included."""

    def starts(side: int) -> list[int]:
        size = min(window, side)
        out = list(range(0, side - size + 1, stride))
        if out[-1] != side - size:
            out.append(side - size)
        return out

    h, w = min(window, height), min(window, width)
    return [(y, x, h, w) for y in starts(height) for x in starts(width)]


def vae_downsample(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ----------------------------------------------------------------------------- DDIM arithmetic


def alpha_bar(scheduler, t: int) -> torch.Tensor:
    """Cumulative alpha at timestep t (t < 0: the scheduler's final value, as DDIM does)."""
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def x0_from_epsilon(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate behind a noise estimate at x_t: (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta 0), epsilon prediction: x_t -> x_{t_prev}. Affine in eps."""
    return a_prev.sqrt() * x0_from_epsilon(x_t, eps, a_t) + (1 - a_prev).sqrt() * eps


def add_noise(x0: torch.Tensor, noise: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): sqrt(a) x0 + sqrt(1 - a) noise."""
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise


# ----------------------------------------------------------------------------- the sampler


class Sampler:
    """The components plus one prompt's text embeddings; runs the passes of one image."""

    def __init__(self, components: dict, prompt: str, settings: MRLFSettings, stats: SamplerStats | None = None):
        self.vae = components["vae"]
        self.unet = components["unet"]
        self.controlnet = components["controlnet"]
        scheduler = components["scheduler"]
        if scheduler.config.get("timestep_spacing") != settings.timestep_spacing:
            scheduler = type(scheduler).from_config(scheduler.config, timestep_spacing=settings.timestep_spacing)
        self.scheduler = scheduler
        # The sampler works in noise estimates (DDIM, view averaging, guidance); a velocity UNet's
        # outputs are converted on the way out of the model (`models.epsilon_from_prediction`).
        self.prediction_type = check_prediction_type(scheduler, "the generator's scheduler")
        self.settings = settings
        self.stats = stats if stats is not None else SamplerStats()
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.factor = vae_downsample(self.vae)
        self.cfg = settings.guidance_scale != 1.0
        tokenizer, encoder = components["tokenizer"], components["text_encoder"]
        texts = ["", prompt] if self.cfg else [prompt]  # CFG: the empty prompt is the unconditional
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            emb = encoder(ids.to(encoder.device))[0].to(self.device, self.dtype)
        self.uncond, self.cond = (emb[:1], emb[1:]) if self.cfg else (None, emb)

    # --- model calls ---------------------------------------------------------------------------

    def _model(self, latents: torch.Tensor, t: int, text: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """One ControlNet + UNet forward on a batch; returns the noise estimate (float32)."""
        latents = latents.to(self.dtype)
        down, mid = self.controlnet(
            latents,
            t,
            encoder_hidden_states=text,
            controlnet_cond=condition.to(self.dtype),
            conditioning_scale=self.settings.controlnet_scale,
            return_dict=False,
        )
        out = self.unet(latents, t, encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0]
        self.stats.unet_calls += 1
        self.stats.unet_samples += latents.shape[0]
        return epsilon_from_prediction(out.float(), latents.float(), alpha_bar(self.scheduler, t).to(out.device), self.prediction_type)

    def _guided(self, eps: torch.Tensor) -> torch.Tensor:
        """Rows [uncond..., cond...] -> guided predictions."""
        if not self.cfg:
            return eps
        uncond, cond = eps.chunk(2)
        return uncond + self.settings.guidance_scale * (cond - uncond)

    def _tile(self, tensor: torch.Tensor, view, factor: int = 1) -> torch.Tensor:
        y, x, h, w = view
        return tensor[..., y * factor : (y + h) * factor, x * factor : (x + w) * factor]

    # --- one step, two implementations ----------------------------------------------------------

    def step_batched(self, z: torch.Tensor, t: int, a_t, a_prev, condition: torch.Tensor, views: list) -> torch.Tensor:
        """Views in batched calls (CFG pair in the same batch), averaged eps, one DDIM step."""
        eps_sum = torch.zeros_like(z)
        count = torch.zeros_like(z[:, :1])
        for start in range(0, len(views), self.settings.max_batch):
            chunk = views[start : start + self.settings.max_batch]
            n = len(chunk)
            tiles = torch.cat([self._tile(z, v) for v in chunk])
            conds = torch.cat([self._tile(condition, v, self.factor) for v in chunk])
            if self.cfg:
                tiles, conds = torch.cat([tiles, tiles]), torch.cat([conds, conds])
                text = torch.cat([self.uncond.expand(n, -1, -1), self.cond.expand(n, -1, -1)])
            else:
                text = self.cond.expand(n, -1, -1)
            eps = self._guided(self._model(tiles, t, text, conds))
            for i, v in enumerate(chunk):
                self._tile(eps_sum, v)[...] += eps[i : i + 1]
                self._tile(count, v)[...] += 1
        self.stats.views_run += len(views)
        eps_mean = eps_sum / count.clamp(min=1)  # uncovered (all-skipped) pixels: eps = 0
        return ddim_step(z, eps_mean, a_t, a_prev)

    def step_loop(self, z: torch.Tensor, t: int, a_t, a_prev, condition: torch.Tensor, views: list) -> torch.Tensor:
        """Released-code style: per view, one call per CFG half, a DDIM step per view tile,
        then the tiles' x_{t-1} averaged (MultiDiffusion)."""
        value = torch.zeros_like(z)
        count = torch.zeros_like(z[:, :1])
        for v in views:
            tile, cond = self._tile(z, v), self._tile(condition, v, self.factor)
            eps_c = self._model(tile, t, self.cond, cond)
            if self.cfg:
                eps_u = self._model(tile, t, self.uncond, cond)
                eps_c = eps_u + self.settings.guidance_scale * (eps_c - eps_u)
            self._tile(value, v)[...] += ddim_step(tile, eps_c, a_t, a_prev)
            self._tile(count, v)[...] += 1
        self.stats.views_run += len(views)
        return torch.where(count > 0, value / count.clamp(min=1), ddim_step(z, torch.zeros_like(z), a_t, a_prev))

    # --- passes ----------------------------------------------------------------------------------

    def denoise(self, z: torch.Tensor, condition: torch.Tensor, views: list, generator: torch.Generator, fuse: tuple | None = None) -> torch.Tensor:
        """The DDIM loop. `fuse` = (z_init, m_bool at the latent grid) turns on the fusion."""
        s = self.settings
        self.scheduler.set_timesteps(s.steps)
        timesteps = self.scheduler.timesteps.tolist()
        step = self.step_loop if s.views == "loop" else self.step_batched
        if fuse is not None and s.skip_masked_views:
            z_init, m = fuse
            active = [v for v in views if not bool(self._tile(m, v).all())]
        else:
            active = views
        self.stats.views_skipped += (len(views) - len(active)) * s.steps
        for i, t in enumerate(timesteps):
            # The next timestep of the schedule; past the last, -1: the scheduler's final alpha.
            # ("leading" spaces them evenly, so this is t - 1000 // steps, as DDIM steps there.)
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            a_t, a_prev = alpha_bar(self.scheduler, t), alpha_bar(self.scheduler, t_prev)
            with torch.no_grad():
                z = step(z, t, a_t.to(z.device), a_prev.to(z.device), condition, active)
            if fuse is not None:
                z_init, m = fuse
                t_fuse = t - 1 if s.fusion_timestep == "previous_tick" else t_prev
                noise = randn(z.shape, generator, z.device)
                z = torch.where(m, add_noise(z_init, noise, alpha_bar(self.scheduler, t_fuse).to(z.device)), z)
        return z

    def decode(self, z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            x = self.vae.decode((z / self.vae.config.scaling_factor).to(self.dtype), return_dict=False)[0]
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x[0].permute(1, 2, 0).cpu().numpy()

    def encode(self, image: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).float().div(127.5).sub(1).to(self.device, self.dtype)
        with torch.no_grad():
            posterior = self.vae.encode(x).latent_dist
        noise = randn(posterior.mean.shape, generator, self.device)
        return (posterior.mean.float() + posterior.std.float() * noise) * self.vae.config.scaling_factor


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise from the CPU generator (device-independent draws), moved to `device`."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (width, height) `size` with Lanczos."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def check_size(height: int, width: int, factor: int) -> None:
    if height % factor or width % factor:
        raise ValueError(f"crop {width}x{height} is not divisible by the VAE downsample factor {factor}")


def sample(components: dict, label: np.ndarray, prompt: str, seed: int, settings: MRLFSettings = MRLFSettings(), stats: SamplerStats | None = None) -> dict:
    """Run MRLF (or plain) for one crop label; returns the intermediate results too:
    {"image", "x_lo", "z_lo", "z_init", "z_hi", "mask"} (pass-2 entries absent in plain mode)."""
    s = settings
    sampler = Sampler(components, prompt, s, stats)
    f, device = sampler.factor, sampler.device
    height, width = label.shape
    check_size(height, width, f)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    latent_channels = components["unet"].config.in_channels

    # pass 1: plain ControlNet generation at crop size (one view = the whole latent)
    condition = one_hot_condition(label).to(device)
    h, w = height // f, width // f
    z = randn((1, latent_channels, h, w), generator, device)
    z_lo = sampler.denoise(z, condition, [(0, 0, h, w)], generator)
    x_lo = sampler.decode(z_lo)
    out = {"x_lo": x_lo, "z_lo": z_lo}
    if s.mode == "plain":
        out["image"] = x_lo
        return out

    # bridge: Lanczos up by `scale`, VAE encode -> z_init
    k = int(s.scale)
    z_init = sampler.encode(lanczos(x_lo, (width * k, height * k)), generator)

    # pass 2: tiled from pure noise at scale x crop, fused with z_init inside M
    label_hi = np.repeat(np.repeat(label, k, axis=0), k, axis=1)  # nearest upsampling
    condition_hi = one_hot_condition(label_hi).to(device)
    mask = large_region_mask(label, s.area_threshold)
    H, W = h * k, w * k
    m = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(H, W), mode="nearest").bool().to(device)
    views = view_windows(H, W, s.window, s.stride)
    sampler.stats.views = len(views)
    z = randn((1, latent_channels, H, W), generator, device)
    z_hi = sampler.denoise(z, condition_hi, views, generator, fuse=(z_init, m))
    image = lanczos(sampler.decode(z_hi), (width, height))
    out.update(image=image, z_init=z_init, z_hi=z_hi, mask=mask)
    return out


def generate_image(components: dict, label: np.ndarray, prompt: str, seed: int, settings: MRLFSettings = MRLFSettings(), stats: SamplerStats | None = None) -> np.ndarray:
    """The generated (H, W, 3) uint8 image for crop label `label` (H x W train IDs)."""
    return sample(components, label, prompt, seed, settings, stats)["image"]
