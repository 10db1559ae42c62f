"""diffusers -> original Stable Diffusion (LDM) checkpoint layout, for tests.

The inverse of diffusers' single-file converters (diffusers/loaders/single_file_utils.py:
convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint), written
for any number of levels and `layers_per_block`, so that a tiny random-init SD-shaped pipeline
can be saved as `v1-5-pruned-emaonly.safetensors` / `.ckpt` is laid out:

    model.diffusion_model.*            the UNet (openaimodel.UNetModel names)
    first_stage_model.*                the VAE (ldm autoencoder names)
    cond_stage_model.transformer.*     the CLIP text encoder (transformers' names, text_model.)

UNet, with L = layers_per_block and level i (attention on every down level but the last and
every up level but the first, as in SD 1.x):
    input_blocks.0.0                         conv_in
    input_blocks.{(L+1)i+j+1}.0 / .1         down_blocks.i.resnets.j / attentions.j
    input_blocks.{(L+1)(i+1)}.0.op           down_blocks.i.downsamplers.0.conv
    middle_block.0 / .1 / .2                 mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.{(L+1)i+j}.0 / .1          up_blocks.i.resnets.j / attentions.j
    output_blocks.{(L+1)i+L}.{1|2}.conv      up_blocks.i.upsamplers.0.conv (.2 after an attention)
    time_embed.0/.2, out.0/.2                time_embedding.linear_1/_2, conv_norm_out/conv_out
  inside a resnet: in_layers.0/.2, emb_layers.1, out_layers.0/.3, skip_connection =
  norm1/conv1, time_emb_proj, norm2/conv2, conv_shortcut; attentions keep their inner names.
VAE, with N levels:
    encoder.down.i.block.j / .downsample     encoder.down_blocks.i.resnets.j / .downsamplers.0
    decoder.up.{N-1-i}.block.j / .upsample   decoder.up_blocks.i.resnets.j / .upsamplers.0
    {en,de}coder.mid.block_1/_2, .mid.attn_1 mid_block.resnets.0/1, mid_block.attentions.0
    norm_out, nin_shortcut                   conv_norm_out, conv_shortcut
  in mid.attn_1: norm, q, k, v, proj_out (1x1 convs) = group_norm, to_q, to_k, to_v, to_out.0.
"""

from __future__ import annotations

import re

RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))  # fmt: skip
VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, table) -> str:
    for new, old in table:
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(rest)


def unet_to_ldm(state: dict, config: dict) -> dict:
    step = config["layers_per_block"] + 1
    up_attention = {i: t.startswith("CrossAttn") for i, t in enumerate(config["up_block_types"])}
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip
    out = {}
    for key, value in state.items():
        module, _, field = key.rpartition(".")
        if module in fixed:
            name = f"{fixed[module]}.{field}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = step * i + j + 1
            name = f"input_blocks.{index}.0.{_rename(rest, RESNET)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            name = f"input_blocks.{step * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key):
            name = f"middle_block.{2 * int(m[1])}.{_rename(m[2], RESNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)$", key):
            name = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = step * i + j
            name = f"output_blocks.{index}.0.{_rename(rest, RESNET)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            i = int(m[1])
            name = f"output_blocks.{step * i + step - 1}.{2 if up_attention[i] else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"unet key {key!r} has no LDM name in this converter")
        out["model.diffusion_model." + name] = value
    return out


def vae_to_ldm(state: dict, config: dict) -> dict:
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        if key.startswith(("quant_conv.", "post_quant_conv.")) or re.match(r"(en|de)coder\.conv_(in|out)\.", key):
            name = key
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)$", key):
            name = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)$", key):
            name = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            name = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key):
            name = f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
            name = f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTENTION)}"
            if value.dim() == 2:  # the original attention's q, k, v, proj_out are 1x1 convs
                value = value.reshape(*value.shape, 1, 1)
        else:
            raise KeyError(f"vae key {key!r} has no LDM name in this converter")
        out["first_stage_model." + name] = value
    return out


def text_encoder_to_ldm(state: dict) -> dict:
    """transformers' CLIPTextModel keys (flattened since transformers 5.6, or under text_model.)."""
    return {"cond_stage_model.transformer.text_model." + key.removeprefix("text_model."): value for key, value in state.items()}


def pipeline_to_ldm(components: dict) -> dict:
    """One state dict in the original SD layout from tiny_components()-style components."""
    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    state = {}
    state.update(unet_to_ldm(unet.state_dict(), dict(unet.config)))
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    state.update(text_encoder_to_ldm(text_encoder.state_dict()))
    return {key: value.detach().clone().contiguous() for key, value in state.items()}
