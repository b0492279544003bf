"""Single-file Stable Diffusion checkpoints in the original LDM layout
(CompVis / Stability, SD 1.x and 2.x): their names mapped to the diffusers
layout, and the model configs inferred from tensor shapes.

The mapping is the one diffusers publishes (convert_original_stable_diffusion_to_diffusers),
written here name by name so it can stream: each diffusers tensor is a
TensorRef onto the LDM tensor, sliced or squeezed where the layouts differ.
"""
import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: OpenAI CLIP, already in transformers' names
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H

UNET_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
            "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
UNET_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
               ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"),
               ("skip_connection", "conv_shortcut"))
VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
OPEN_CLIP_LAYER = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                   ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))


def is_ldm(names):
    return any(n.startswith(UNET_PREFIX) for n in names)


def _strip(refs, prefix):
    return {n[len(prefix):]: r for n, r in refs.items() if n.startswith(prefix)}


def _replace_all(name, pairs):
    for old, new in pairs:
        name = name.replace(old, new)
    return name


# ----------------------------------------------------------------------------- UNet

def _unet_name(name, per_block):
    """The diffusers name of an LDM UNet tensor (prefix removed), or None."""
    head, _, param = name.rpartition(".")
    if head in UNET_TOP:
        return f"{UNET_TOP[head]}.{param}"
    m = re.fullmatch(r"(input_blocks|output_blocks|middle_block)\.(\d+)\.(?:(\d+)\.)?(.+)", name)
    if not m:
        return None
    kind, i, j, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if kind == "middle_block":
        return (f"mid_block.attentions.0.{rest}" if i == 1 else
                f"mid_block.resnets.{i // 2}.{_replace_all(rest, UNET_RESNET)}")
    j = int(j)
    if kind == "input_blocks":
        block, layer = divmod(i - 1, per_block + 1)
        if rest.startswith("op."):
            return f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}"
        return (f"down_blocks.{block}.resnets.{layer}.{_replace_all(rest, UNET_RESNET)}" if j == 0 else
                f"down_blocks.{block}.attentions.{layer}.{rest}")
    block, layer = divmod(i, per_block + 1)
    if j == 0:
        return f"up_blocks.{block}.resnets.{layer}.{_replace_all(rest, UNET_RESNET)}"
    if rest.startswith("conv."):
        return f"up_blocks.{block}.upsamplers.0.{rest}"
    return f"up_blocks.{block}.attentions.{layer}.{rest}"


def _unet_config(refs, per_block, image_size, upcast_attention):
    blocks = {int(n.split(".")[1]) for n in refs if n.startswith("input_blocks.")}
    downs = sorted(i for i in blocks if f"input_blocks.{i}.0.op.weight" in refs)
    levels = len(downs) + 1
    firsts = [1 + level * (per_block + 1) for level in range(levels)]
    channels = [refs[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] for i in firsts]
    attention = [any(n.startswith(f"input_blocks.{i}.1.") for n in refs) for i in firsts]
    context = next(r.shape[1] for n, r in refs.items() if n.endswith("attn2.to_k.weight"))
    linear = len(next(r for n, r in refs.items() if n.endswith("proj_in.weight")).shape) == 2
    # heads are not in the shapes; SD 1.x uses 8 heads, SD 2.x heads of 64 channels
    heads = 8 if context == 768 else [max(1, c // 64) for c in channels]
    return dict(
        _class_name="UNet2DConditionModel", sample_size=image_size // 8,
        in_channels=refs["input_blocks.0.0.weight"].shape[1], out_channels=refs["out.2.weight"].shape[0],
        block_out_channels=channels, layers_per_block=per_block, cross_attention_dim=context,
        attention_head_dim=heads, use_linear_projection=linear, upcast_attention=upcast_attention,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        mid_block_type="UNetMidBlock2DCrossAttn", norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
    )


def convert_unet(refs, image_size, upcast_attention=False):
    refs = _strip(refs, UNET_PREFIX)
    ops = sorted(int(n.split(".")[1]) for n in refs if re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", n))
    if not ops:
        raise ValueError("an LDM UNet without downsamplers (input_blocks.N.0.op): "
                         "not a Stable Diffusion UNet")
    per_block = ops[0] - 1
    out = {}
    for n, r in refs.items():
        name = _unet_name(n, per_block)
        if name is None:
            raise ValueError(f"LDM UNet tensor with no diffusers name: {n}")
        out[name] = r
    return _unet_config(refs, per_block, image_size, upcast_attention), out


# ----------------------------------------------------------------------------- VAE

def _squeeze(ref):
    """LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers."""
    if len(ref.shape) == 4:
        return ref.derived(ref.shape[:2], lambda w: w[:, :, 0, 0])
    return ref


def _vae_name(name, levels):
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", name)
    if not m:
        return name if name.split(".")[0] in ("quant_conv", "post_quant_conv") else None
    part, rest = m.groups()
    rest = rest.replace("nin_shortcut", "conv_shortcut")
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out.{rest[len('norm_out.'):]}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return f"{part}.{rest}"
    m = re.fullmatch(r"mid\.block_(\d)\.(.+)", rest)
    if m:
        return f"{part}.mid_block.resnets.{int(m.group(1)) - 1}.{m.group(2)}"
    m = re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)
    if m:
        return f"{part}.mid_block.attentions.0.{VAE_ATTENTION[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", rest)
    if not m:
        return None
    kind, level, inner, resnet, param = m.groups()
    level = int(level) if kind == "down" else levels - 1 - int(level)  # LDM counts decoder levels upwards
    sampler = "downsamplers" if kind == "down" else "upsamplers"
    inner = f"resnets.{resnet}" if resnet is not None else f"{sampler}.0"
    return f"{part}.{kind}_blocks.{level}.{inner}.{param}"


def convert_vae(refs, image_size):
    refs = _strip(refs, VAE_PREFIX)
    levels = len({n.split(".")[2] for n in refs if n.startswith("encoder.down.")})
    out = {}
    for n, r in refs.items():
        name = _vae_name(n, levels)
        if name is None:
            raise ValueError(f"LDM VAE tensor with no diffusers name: {n}")
        out[name] = _squeeze(r) if ".attentions." in name else r
    per_block = len({n.split(".")[4] for n in refs if n.startswith("encoder.down.0.block.")})
    channels = [refs[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(levels)]
    config = dict(_class_name="AutoencoderKL", in_channels=refs["encoder.conv_in.weight"].shape[1],
                  out_channels=refs["decoder.conv_out.weight"].shape[0], block_out_channels=channels,
                  down_block_types=["DownEncoderBlock2D"] * levels,
                  up_block_types=["UpDecoderBlock2D"] * levels,
                  latent_channels=refs["post_quant_conv.weight"].shape[0], layers_per_block=per_block,
                  norm_num_groups=32, sample_size=image_size, scaling_factor=0.18215)
    return config, out


# ----------------------------------------------------------------------------- text encoder

def _open_clip(refs):
    """OpenCLIP's transformer to transformers' CLIPTextModel. SD 2.x conditions on
    the penultimate layer, so the last block is dropped, as diffusers does."""
    layers = len({n.split(".")[2] for n in refs if n.startswith("transformer.resblocks.")})
    width = refs["token_embedding.weight"].shape[1]
    out = {"text_model.embeddings.token_embedding.weight": refs["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": refs["positional_embedding"],
           "text_model.final_layer_norm.weight": refs["ln_final.weight"],
           "text_model.final_layer_norm.bias": refs["ln_final.bias"]}
    for n, r in refs.items():
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", n)
        if not m or int(m.group(1)) == layers - 1:
            continue
        prefix, rest = f"text_model.encoder.layers.{m.group(1)}.", m.group(2)
        if rest.startswith("attn.in_proj_"):
            param = rest[len("attn.in_proj_"):]
            for k, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{prefix}self_attn.{proj}.{param}"] = r.derived(
                    (width,) + r.shape[1:], lambda w, k=k: w[k * width:(k + 1) * width])
        else:
            out[prefix + _replace_all(rest, OPEN_CLIP_LAYER)] = r
    return out, layers - 1, "gelu"


def convert_text_encoder(refs):
    clip = _strip(refs, CLIP_PREFIX)
    if clip:
        out = {n: r for n, r in clip.items() if not n.endswith("position_ids")}
        layers = len({n.split(".")[3] for n in out if n.startswith("text_model.encoder.layers.")})
        act = "quick_gelu"
    else:
        out, layers, act = _open_clip(_strip(refs, OPEN_CLIP_PREFIX))
    vocab, width = out["text_model.embeddings.token_embedding.weight"].shape
    config = dict(architectures=["CLIPTextModel"], model_type="clip_text_model", vocab_size=vocab,
                  hidden_size=width,
                  intermediate_size=out["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                  max_position_embeddings=out["text_model.embeddings.position_embedding.weight"].shape[0],
                  hidden_act=act, layer_norm_eps=1e-5, projection_dim=width, bos_token_id=0, eos_token_id=2,
                  pad_token_id=1, torch_dtype="float32")
    return config, out


def scheduler_config(prediction_type):
    """Stable Diffusion's training schedule, as the DDIM config Tune-A-Video samples with."""
    return dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                prediction_type=prediction_type)


def convert(refs, prediction_type="epsilon", image_size=None, upcast_attention=False):
    """{component: (config, {diffusers name: TensorRef})} for unet, vae and text_encoder, and the
    names of the tensors outside the three models (EMA copies, training state), which are left out."""
    has_vae = any(n.startswith(VAE_PREFIX) for n in refs)
    has_text = any(n.startswith((CLIP_PREFIX, OPEN_CLIP_PREFIX)) for n in refs)
    if not (has_vae and has_text):
        missing = "its VAE" if not has_vae else "its text encoder"
        raise ValueError(f"an LDM checkpoint without {missing} (first_stage_model. / cond_stage_model.); "
                         "only full Stable Diffusion files are converted")
    open_clip = any(n.startswith(OPEN_CLIP_PREFIX) for n in refs)
    if image_size is None:
        image_size = 768 if open_clip and prediction_type == "v_prediction" else 512
    try:
        parts = {"unet": convert_unet(refs, image_size, upcast_attention),
                 "vae": convert_vae(refs, image_size), "text_encoder": convert_text_encoder(refs)}
    except KeyError as e:
        raise ValueError(f"an incomplete LDM checkpoint: no tensor for {e}") from None
    left_out = [n for n in refs if not n.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX, OPEN_CLIP_PREFIX))]
    return parts, left_out
