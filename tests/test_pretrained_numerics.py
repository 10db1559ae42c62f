"""Numerical equivalence of `convert-pretrained --format mit`.

test_seg_models.py checks that the converted MiT checkpoint has the right key names and
shapes. That does not prove that the converted network computes what the SegFormer authors'
network computes: a wrong q/k/v order in the concatenated attention projection, a transposed
Linear -> 1x1 conv, or a swapped feed-forward layer would load without complaint and only make
the pretrained start worse. Here a small reference implementation of the authors' (NVlabs)
Mix Transformer, with their parameter names, is random-initialised, its state dict goes through
the real conversion and loading path (a .pth on disk -> `convert-pretrained` CLI -> .safetensors
-> `read_backbone_weights` -> `load_into_backbone`), and the four stage outputs of the mmseg
MixVisionTransformer that our catalog builds are compared with the reference's.

The reference is written from the published architecture (SegFormer, Xie et al. 2021, and the
authors' `mix_transformer.py`), kept to what inference needs: no dropout and no drop-path
(both are identities in eval mode), which is also why the mmseg side is put in eval mode.

Result: the mapping is exact (float64 differences ~1e-15). One difference between the authors'
network and mmseg's remains that no conversion can remove, a LayerNorm eps (1e-5 vs 1e-6) in
the patch-embedding and spatial-reduction norms, worth a few 1e-5 on these random weights; see
`BLOCK_EPS` below and the second test.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmseg")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from dginstyle.cli import main  # noqa: E402
from dginstyle.segmentation.catalog import BACKBONES  # noqa: E402

# LayerNorm eps. The authors' mit_b0..b5 (and DAFormer's copy of their file) pass
# `norm_layer=partial(nn.LayerNorm, eps=1e-6)`, which reaches the block norms (norm1, norm2)
# and the stage norms (norm{i}); their OverlapPatchEmbed and the attention's spatial-reduction
# norm build a plain `nn.LayerNorm`, eps 1e-5. mmseg's MixVisionTransformer gives all of its
# norms one norm_cfg, eps 1e-6. eps is no tensor of the checkpoint, so no key conversion can
# carry it: the converter test compares against the reference with mmseg's eps everywhere, and
# a separate test measures the authors' eps and shows that it accounts for the whole residual.
BLOCK_EPS = 1e-6
AUTHORS_PLAIN_EPS = 1e-5
MMSEG_EPS = 1e-6

# Tight: float32, outputs of LayerNorms (order 1). A mapping error gives O(0.1-1) errors; what
# remains of a correct mapping is float32 rounding (measured under 4e-6), and in float64 1e-14.
ATOL = 1e-5
ATOL_FLOAT64 = 1e-10


# ---------------------------------------------------------------- reference (NVlabs key names)


class RefPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided conv (padding patch // 2) and a LayerNorm over the
    channels of each token. Returns the tokens (B, H*W, C) and the grid size."""

    def __init__(self, in_ch: int, dim: int, patch: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch, stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class RefAttention(nn.Module):
    """Efficient self-attention: queries from every token; keys and values from one Linear
    `kv` (k in the first `dim` outputs, v in the second) applied to the token grid shrunk by a
    conv of kernel = stride = sr_ratio (and a LayerNorm) when sr_ratio > 1."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, eps: float):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr_ratio
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)  # qkv_bias=True in mit_b*
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x, h, w):
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)  # (B, heads, N, d)
        src = x
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, c, h, w)
            src = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        # (B, M, 2C) -> (2, B, heads, M, d): the k/v split is the outermost of the 2C outputs
        kv = self.kv(src).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class RefDWConv(nn.Module):
    """The 3x3 depthwise conv of Mix-FFN, on tokens laid back onto their grid. A wrapper
    module only so that its parameters are named `mlp.dwconv.dwconv.*` as in the checkpoints."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, h, w):
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class RefMlp(nn.Module):
    """Mix-FFN: fc1 -> depthwise conv -> GELU -> fc2 (the conv comes before the activation)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = RefDWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, h, w):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class RefBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, plain_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.attn = RefAttention(dim, heads, sr_ratio, plain_eps)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.mlp = RefMlp(dim, dim * mlp_ratio)

    def forward(self, x, h, w):
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class RefMiT(nn.Module):
    """Four stages: patch_embed{i} (7x7 stride 4, then 3x3 stride 2), block{i}.{j}, norm{i};
    each stage's normalised tokens are returned as an NCHW map and feed the next stage.
    `plain_eps`: the eps of the patch-embedding and spatial-reduction norms (see above)."""

    def __init__(self, dims, heads, depths, sr_ratios, plain_eps: float, mlp_ratio=4):
        super().__init__()
        previous = 3
        for i, (dim, nh, depth, sr) in enumerate(zip(dims, heads, depths, sr_ratios), start=1):
            patch, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", RefPatchEmbed(previous, dim, patch, stride, plain_eps))
            setattr(self, f"block{i}", nn.ModuleList(RefBlock(dim, nh, sr, mlp_ratio, plain_eps) for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=BLOCK_EPS))
            previous = dim

    def forward(self, x):
        outs = []
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


def randomise(model: nn.Module, seed: int) -> None:
    """Random values everywhere, LayerNorms included: with their default ones/zeros a swapped
    norm weight/bias or a norm mapped onto the wrong layer would go unnoticed. Weights are
    scaled by 1/sqrt(fan-in) so that activations stay O(1) and the attention is neither uniform
    nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ".norm" in f".{name}" and name.endswith(".weight"):  # LayerNorm gain
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(noise / math.sqrt(fan_in))


def tiny_reference(backbone: str, plain_eps: float, seed: int = 0) -> RefMiT:
    """The reference with the shape of one of our tiny backbones (catalog.BACKBONES; the
    defaults below are configs._backbone_config's), random weights fixed by `seed`."""
    spec = BACKBONES[backbone]
    dims = [spec["embed_dims"] * h for h in spec["num_heads"]]
    ref = RefMiT(dims, spec["num_heads"], spec["num_layers"], spec.get("sr_ratios", [8, 4, 2, 1]), plain_eps)
    randomise(ref, seed)
    return ref.eval()


# ---------------------------------------------------------------- the path under test


@pytest.fixture(scope="module")
def registry():
    from mmengine.registry import init_default_scope

    from dginstyle.segmentation import register_modules

    register_modules()
    init_default_scope("mmseg")
    from mmseg.registry import MODELS

    return MODELS


def converted_backbone(registry, ref: RefMiT, model: str, tmp_path, capsys):
    """The mmseg backbone of `model`, filled from `ref`'s weights through the real path: the
    authors' .pth layout on disk (with an ImageNet classifier `head.*`, which must be dropped),
    `dginstyle convert-pretrained`, and the loader `train-segmentation --pretrained` uses."""
    from dginstyle.segmentation.configs import model_config
    from dginstyle.segmentation.pretrained import load_into_backbone, read_backbone_weights

    state = dict(ref.state_dict())
    last = ref.norm4.weight.shape[0]
    state |= {"head.weight": torch.randn(7, last), "head.bias": torch.randn(7)}
    src, out = tmp_path / "mit_ref.pth", tmp_path / "mit_ref.safetensors"
    torch.save(state, src)
    capsys.readouterr()
    assert main(["convert-pretrained", "--format", "mit", "--in", str(src), "--out", str(out), "--model", model]) == 0
    assert "dropped the classifier (2 tensors)" in capsys.readouterr().out

    torch.manual_seed(123)  # the backbone's own init is overwritten entirely by the load
    backbone = registry.build(model_config(model, (64, 64))["backbone"])
    weights = read_backbone_weights(out)
    blocks = sum(len(getattr(ref, f"block{i}")) for i in range(1, 5))
    # every tensor lands; per block q.weight/bias + kv.weight/bias become one in_proj_weight/bias
    assert load_into_backbone(backbone, weights, out) == len(state) - 2 - 2 * blocks
    return backbone.eval()


def stage_differences(ref, backbone, shape, seed=1, dtype=torch.float32) -> list[float]:
    """Max |difference| of each of the four stage outputs on one random input."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        expected, got = ref(x), backbone(x)
    assert len(got) == len(expected) == 4
    for e, o in zip(expected, got):
        assert o.shape == e.shape
    return [(o - e).abs().max().item() for e, o in zip(expected, got)]


# Which of our models uses which tiny MiT: mit_tiny (sr 8, 4, 2, 1) is the plain SegFormer /
# DAFormer backbone; mit_tiny_sr4 (sr 4, 2, 1, 1: two stages without spatial reduction) the
# tiny HRDA's. Stage 4 of both, and stage 3 of mit_tiny_sr4, exercise the sr_ratio 1 path.
CASES = [("mit_tiny", "segformer_tiny"), ("mit_tiny_sr4", "hrda_daformer_tiny")]
SHAPES = [(1, 3, 64, 64), (1, 3, 64, 96), (2, 3, 47, 81)]  # square, wide, odd sizes and a batch of 2


@pytest.mark.parametrize("backbone_name,model", CASES)
def test_converted_mit_computes_the_reference_network(registry, tmp_path, capsys, backbone_name, model):
    from dginstyle.segmentation.catalog import backbone_of

    assert backbone_of(model) == backbone_name
    ref = tiny_reference(backbone_name, plain_eps=MMSEG_EPS)
    backbone = converted_backbone(registry, ref, model, tmp_path, capsys)
    for shape in SHAPES:
        diffs = stage_differences(ref, backbone, shape)
        print(f"{backbone_name} {shape} float32: max |difference| per stage {['%.1e' % d for d in diffs]}")
        assert max(diffs) < ATOL, (shape, diffs)
    # in float64 rounding all but vanishes: what is left would be a modelling difference
    diffs = stage_differences(ref.double(), backbone.double(), SHAPES[1], dtype=torch.float64)
    print(f"{backbone_name} {SHAPES[1]} float64: max |difference| per stage {['%.1e' % d for d in diffs]}")
    assert max(diffs) < ATOL_FLOAT64, diffs


def test_the_authors_layernorm_eps_is_the_only_remaining_difference(registry, tmp_path, capsys):
    """Against the authors' exact network (eps 1e-5 in the patch-embedding and spatial-reduction
    norms) mmseg's MiT differs by a few 1e-5 (a relative change of the order of
    (1e-5 - 1e-6) / variance in those norms' outputs); giving exactly those mmseg norms eps 1e-5
    brings the difference down to float32 rounding, so nothing else differs."""
    ref = tiny_reference("mit_tiny", plain_eps=AUTHORS_PLAIN_EPS)
    backbone = converted_backbone(registry, ref, "segformer_tiny", tmp_path, capsys)
    shape = SHAPES[1]
    as_built = max(stage_differences(ref, backbone, shape))
    print(f"authors' eps vs mmseg MiT as built: {as_built:.1e}")
    assert as_built < 2e-4  # small: the eps, not the weights
    # mmseg's names: layers.{i}.0 is the PatchEmbed (its .norm), and each block's attn.norm
    # exists where sr_ratio > 1
    changed = 0
    for name, module in backbone.named_modules():
        if isinstance(module, nn.LayerNorm) and (name.endswith(".0.norm") or name.endswith(".attn.norm")):
            module.eps = AUTHORS_PLAIN_EPS
            changed += 1
    assert changed == 4 + 3  # four patch embeddings, one block with sr > 1 in each of stages 1-3
    matched = max(stage_differences(ref, backbone, shape))
    print(f"authors' eps vs mmseg MiT with those eps set: {matched:.1e}")
    assert matched < ATOL


def test_the_comparison_catches_a_wrong_qkv_order(registry, tmp_path, capsys):
    """The comparison can fail: the same network with k and v swapped inside the concatenated
    in_proj (one plausible conversion mistake) is far off the reference."""
    ref = tiny_reference("mit_tiny", plain_eps=MMSEG_EPS)
    backbone = converted_backbone(registry, ref, "segformer_tiny", tmp_path, capsys)
    assert max(stage_differences(ref, backbone, SHAPES[0])) < ATOL
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "in_proj" in name:
                c = p.shape[0] // 3
                p.copy_(torch.cat([p[:c], p[2 * c :], p[c : 2 * c]]))
    swapped = max(stage_differences(ref, backbone, SHAPES[0]))
    print(f"k and v swapped: {swapped:.1e}")
    assert swapped > 1e-2
