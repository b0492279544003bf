"""UNet3DConditionModel: a Stable Diffusion UNet inflated to video.

Config fields are those of diffusers' UNet2DConditionModel for SD 1.x and 2.x;
parameter names equal the diffusers names, so image checkpoints load by name
and the inflated model adds only attn_temp and norm_temp.
"""
import math
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .layers import Embedding, Linear
from .modeling import ModelMixin, build_config, load_weights, model_folder, read_config
from .normalization import GroupNorm
from .resnet import InflatedConv3d
from .unet_blocks import UNetMidBlock3DCrossAttn, get_down_block, get_up_block

DEFAULTS = dict(
    sample_size=None, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    mid_block_type="UNetMidBlock3DCrossAttn",
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1.0, dropout=0.0, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=1280, transformer_layers_per_block=1, attention_head_dim=8, num_attention_heads=None,
    dual_cross_attention=False, use_linear_projection=False, class_embed_type=None, num_class_embeds=None,
    projection_class_embeddings_input_dim=None, upcast_attention=False, resnet_time_scale_shift="default",
    conv_in_kernel=3, conv_out_kernel=3,
    addition_embed_type_num_heads=64)  # read by diffusers only with an addition embedding

# Fields of newer diffusers configs that SD 1.x/2.x leave at these values; any
# other value names a model this UNet does not implement.
UNSUPPORTED = dict(
    encoder_hid_dim=None, encoder_hid_dim_type=None, addition_embed_type=None, addition_time_embed_dim=None,
    time_embedding_type="positional", time_embedding_dim=None, time_embedding_act_fn=None,
    timestep_post_act=None,
    time_cond_proj_dim=None, attention_type="default", class_embeddings_concat=False,
    mid_block_only_cross_attention=None, cross_attention_norm=None, resnet_skip_time_act=False,
    resnet_out_scale_factor=1.0, reverse_transformer_layers_per_block=None, dual_cross_attention=False,
    act_fn="silu")


def _per_block(value, n, name):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} blocks")
    return values


def inflate_config(config):
    """A UNet2DConditionModel config as the video UNet's: 3D block names and
    every field filled in. A config without mid_block_type gets the default
    mid block (only an explicit null means none)."""
    config = dict(config)
    config["_class_name"] = "UNet3DConditionModel"
    config["down_block_types"] = [t.replace("2D", "3D") for t in config.get("down_block_types",
                                                                            DEFAULTS["down_block_types"])]
    up_block_types = config.get("up_block_types", DEFAULTS["up_block_types"])
    config["up_block_types"] = [t.replace("2D", "3D") for t in up_block_types]
    if config.get("mid_block_type", DEFAULTS["mid_block_type"]) is not None:
        config["mid_block_type"] = "UNetMidBlock3DCrossAttn"
    return config


class Timesteps(nn.Cell):
    """Sinusoidal timestep embedding (diffusers' get_timestep_embedding)."""

    def __init__(self, num_channels, flip_sin_to_cos, downscale_freq_shift):
        super().__init__()
        half = num_channels // 2
        exponent = -math.log(10000) * np.arange(half, dtype=np.float32) / (half - downscale_freq_shift)
        self.freqs = Tensor(np.exp(exponent).astype(np.float32))
        self.flip_sin_to_cos = flip_sin_to_cos
        self.pad = num_channels % 2

    def construct(self, timesteps):
        args = timesteps.astype(ms.float32).reshape(-1, 1) * self.freqs.reshape(1, -1)
        if self.flip_sin_to_cos:
            emb = ops.concat((ops.cos(args), ops.sin(args)), -1)
        else:
            emb = ops.concat((ops.sin(args), ops.cos(args)), -1)
        if self.pad:
            emb = ops.pad(emb, (0, 1))
        return emb


class TimestepEmbedding(nn.Cell):
    def __init__(self, in_channels, time_embed_dim):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim)
        self.linear_2 = Linear(time_embed_dim, time_embed_dim)

    def construct(self, x):
        return self.linear_2(ops.silu(self.linear_1(x)))


class UNet3DConditionModel(ModelMixin, nn.Cell):
    """`from_pretrained` loads a video UNet: one saved here, or one the PyTorch
    Tune-A-Video wrote (3D config, diffusion_pytorch_model.bin)."""

    def __init__(self, **config):
        super().__init__()
        unsupported = sorted(k for k, v in config.items() if k in UNSUPPORTED and v != UNSUPPORTED[k]
                             and not (isinstance(v, list) and tuple(v) == UNSUPPORTED[k]))
        if unsupported:
            settings = ", ".join(f"{k}={config[k]!r}" for k in unsupported)
            raise ValueError(f"unsupported UNet config: {settings} "
                             "(this UNet implements Stable Diffusion 1.x/2.x)")
        c = build_config("UNet", DEFAULTS, inflate_config(config), UNSUPPORTED)
        self.config = c
        n = len(c.down_block_types)
        if len(c.up_block_types) != n or len(c.block_out_channels) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have one entry "
                             f"per level (got {n}, {len(c.up_block_types)}, {len(c.block_out_channels)})")
        heads = _per_block(c.num_attention_heads or c.attention_head_dim, n, "attention_head_dim")
        only_cross = _per_block(c.only_cross_attention, n, "only_cross_attention")
        layers = _per_block(c.layers_per_block, n, "layers_per_block")
        cross_dims = _per_block(c.cross_attention_dim, n, "cross_attention_dim")
        if any(t != 1 for t in _per_block(c.transformer_layers_per_block, n, "transformer_layers_per_block")):
            raise ValueError("transformer_layers_per_block other than 1 is not supported (SD 1.x/2.x use 1)")
        channels = list(c.block_out_channels)
        time_embed_dim = channels[0] * 4
        self.center_input_sample = c.center_input_sample
        self.cross_attention_dim = cross_dims[0]
        self.conv_in = InflatedConv3d(c.in_channels, channels[0], c.conv_in_kernel,
                                      padding=(c.conv_in_kernel - 1) // 2)
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        self.class_embed_type = c.class_embed_type
        self.class_embedding = self._class_embedding(c, channels[0], time_embed_dim)

        attn_args = dict(use_linear_projection=c.use_linear_projection, upcast_attention=c.upcast_attention)
        common = dict(temb_channels=time_embed_dim, resnet_eps=c.norm_eps, resnet_groups=c.norm_num_groups,
                      dropout=c.dropout, resnet_time_scale_shift=c.resnet_time_scale_shift)
        down_blocks = []
        for i, block_type in enumerate(c.down_block_types):
            down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i], add_downsample=i < n - 1, downsample_padding=c.downsample_padding,
                num_attention_heads=heads[i], cross_attention_dim=cross_dims[i],
                only_cross_attention=only_cross[i], **attn_args, **common))
        self.down_blocks = nn.CellList(down_blocks)
        self.mid_block = None
        if c.mid_block_type is not None:
            self.mid_block = UNetMidBlock3DCrossAttn(
                channels[-1], time_embed_dim, resnet_eps=c.norm_eps, resnet_groups=c.norm_num_groups,
                dropout=c.dropout, resnet_time_scale_shift=c.resnet_time_scale_shift,
                output_scale_factor=c.mid_block_scale_factor, num_attention_heads=heads[-1],
                cross_attention_dim=cross_dims[-1], **attn_args)
        up_blocks = []
        rev = list(reversed(channels))
        for i, block_type in enumerate(c.up_block_types):
            j = n - 1 - i
            up_blocks.append(get_up_block(
                block_type, num_layers=layers[j] + 1, in_channels=rev[min(i + 1, n - 1)],
                prev_output_channel=rev[max(i - 1, 0)], out_channels=rev[i], add_upsample=i < n - 1,
                num_attention_heads=heads[j], cross_attention_dim=cross_dims[j],
                only_cross_attention=only_cross[j], **attn_args, **common))
        self.up_blocks = nn.CellList(up_blocks)
        self.up_block_layers = tuple(layers[n - 1 - i] + 1 for i in range(n))
        self.conv_norm_out = GroupNorm(c.norm_num_groups, channels[0], eps=c.norm_eps)
        self.conv_out = InflatedConv3d(channels[0], c.out_channels, c.conv_out_kernel,
                                       padding=(c.conv_out_kernel - 1) // 2)

    @staticmethod
    def _class_embedding(c, timestep_dim, time_embed_dim):
        kind = c.class_embed_type
        if kind is None:
            return Embedding(c.num_class_embeds, time_embed_dim) if c.num_class_embeds is not None else None
        if kind == "timestep":
            return TimestepEmbedding(timestep_dim, time_embed_dim)
        if kind == "identity":
            return nn.Identity()
        if kind == "projection":
            return TimestepEmbedding(c.projection_class_embeddings_input_dim, time_embed_dim)
        raise ValueError(f"unsupported class_embed_type {kind!r} "
                         "(None, 'timestep', 'identity' or 'projection')")

    # ------------------------------------------------------------------------- forward

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels=None):
        self._check_inputs(sample, encoder_hidden_states, class_labels)
        if not isinstance(timestep, Tensor):
            timestep = Tensor(np.asarray(timestep, np.float32).reshape(-1))
        return super().__call__(sample, timestep, encoder_hidden_states, class_labels)

    def _check_inputs(self, sample, encoder_hidden_states, class_labels):
        if sample.ndim != 5:
            raise ValueError(f"sample must be 5-D [batch, channels, frames, height, width], got shape "
                             f"{tuple(sample.shape)}")
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample has {sample.shape[1]} channels; "
                             f"this UNet takes {self.config.in_channels}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != self.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states must be [batch, tokens, {self.cross_attention_dim}], "
                             f"got {tuple(encoder_hidden_states.shape)}")
        if self.class_embedding is not None and class_labels is None:
            raise ValueError("class_labels are required for a UNet with class embeddings")

    def construct(self, sample, timestep, encoder_hidden_states, class_labels=None):
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = ops.broadcast_to(timestep.reshape(-1), (sample.shape[0],))
        emb = self.time_embedding(self.time_proj(timesteps).astype(sample.dtype))
        if self.class_embedding is not None:
            if self.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).astype(sample.dtype)
            emb = emb + self.class_embedding(class_labels).astype(emb.dtype)

        sample = self.conv_in(sample)
        skips = (sample,)
        for block in self.down_blocks:
            sample, states = block(sample, emb, encoder_hidden_states)
            skips += states
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb, encoder_hidden_states)
        for block, n in zip(self.up_blocks, self.up_block_layers):
            res_samples, skips = skips[-n:], skips[:-n]
            # the next skip's size: upsampling meets it exactly when a size was odd on the way down
            upsample_size = skips[-1].shape[-2:] if skips else None
            sample = block(sample, res_samples, emb, encoder_hidden_states, upsample_size)
        return self.conv_out(ops.silu(self.conv_norm_out(sample)))

    # ------------------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained_2d(cls, pretrained_model_path: str, subfolder: Optional[str] = None,
                           variant: Optional[str] = None) -> "UNet3DConditionModel":
        """Inflates a Stable Diffusion UNet2DConditionModel folder (or Hub id). The
        temporal layers are new: attn_temp starts with a zero output projection,
        so the video UNet equals the image UNet frame by frame on a static clip."""
        folder = model_folder(pretrained_model_path, subfolder)
        model = cls(**read_config(folder))
        load_weights(model, folder, variant=variant,
                     may_be_missing=lambda name: ".attn_temp." in name or ".norm_temp." in name)
        model._init_temporal_projections()
        return model

    def _init_temporal_projections(self, seed=0):
        """attn_temp's q/k/v start from a fixed draw (torch's default uniform
        init), so inflating the same checkpoint twice gives the same model:
        runs and resumed runs agree even when attn_temp is not trained."""
        rng = np.random.default_rng(seed)
        for name, param in self.parameters_and_names():
            if ".attn_temp.to_" in name and ".to_out." not in name:
                bound = 1.0 / math.sqrt(param.shape[1])
                param.set_data(Tensor(rng.uniform(-bound, bound, param.shape).astype(np.float32)))
