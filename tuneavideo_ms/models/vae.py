"""AutoencoderKL (the Stable Diffusion VAE) with diffusers' parameter names.

Images are handled as one-frame videos [n, c, 1, h, w], so the VAE reuses the
video UNet's resnets and samplers unchanged (with one frame, their GroupNorm
is per image, as in the 2D VAE).
"""
from mindspore import nn, ops

from .. import runtime
from .attention import CrossAttention
from .modeling import ModelMixin, build_config
from .normalization import GroupNorm
from .resnet import Downsample3D, InflatedConv3d, ResnetBlock3D, Upsample3D

DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
                act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.18215,
                shift_factor=None, latents_mean=None, latents_std=None, force_upcast=True,
                use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)


class VAEAttention(CrossAttention):
    """Single-head self-attention over pixels, with its own GroupNorm and a residual."""

    def __init__(self, channels, groups, eps):
        super().__init__(channels, heads=1, dim_head=channels, bias=True, upcast_attention=True)
        self.group_norm = GroupNorm(groups, channels, eps)

    def construct(self, x):
        n, c, f, h, w = x.shape
        rows = runtime.swap_axes_1_2(self.group_norm(x).reshape(n, c, f * h * w, 1)).reshape(n * f * h * w, c)
        out = super().construct(rows, f * h * w)
        return runtime.swap_axes_1_2(out.reshape(n, f * h * w, c, 1)).reshape(n, c, f, h, w) + x


class MidBlock(nn.Cell):
    def __init__(self, channels, groups, add_attention):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock3D(channels, channels, None, groups=groups) for _ in range(2)])
        self.attentions = nn.CellList([VAEAttention(channels, groups, 1e-6)]) if add_attention else None

    def construct(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class ResnetStack(nn.Cell):
    """Resnets, then a down- or upsampler: DownEncoderBlock2D and UpDecoderBlock2D."""

    def __init__(self, in_channels, out_channels, num_layers, groups, downsample=False, upsample=False):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, None,
                                                  groups=groups) for i in range(num_layers)])
        self.downsamplers = nn.CellList([Downsample3D(out_channels, padding=0)]) if downsample else None
        self.upsamplers = nn.CellList([Upsample3D(out_channels)]) if upsample else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Cell):
    def __init__(self, c):
        super().__init__()
        channels, groups, n = list(c.block_out_channels), c.norm_num_groups, len(c.block_out_channels)
        self.conv_in = InflatedConv3d(c.in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.CellList([
            ResnetStack(channels[max(i - 1, 0)], channels[i], c.layers_per_block, groups,
                        downsample=i < n - 1)
            for i in range(n)])
        self.mid_block = MidBlock(channels[-1], groups, c.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(groups, channels[-1], eps=1e-6)
        self.conv_out = InflatedConv3d(channels[-1], 2 * c.latent_channels, 3, padding=1)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(ops.silu(self.conv_norm_out(x)))


class Decoder(nn.Cell):
    def __init__(self, c):
        super().__init__()
        rev, groups, n = list(reversed(c.block_out_channels)), c.norm_num_groups, len(c.block_out_channels)
        self.conv_in = InflatedConv3d(c.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], groups, c.mid_block_add_attention)
        self.up_blocks = nn.CellList([
            ResnetStack(rev[max(i - 1, 0)], rev[i], c.layers_per_block + 1, groups, upsample=i < n - 1)
            for i in range(n)])
        self.conv_norm_out = GroupNorm(groups, rev[-1], eps=1e-6)
        self.conv_out = InflatedConv3d(rev[-1], c.out_channels, 3, padding=1)

    def construct(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(ops.silu(self.conv_norm_out(x)))


class AutoencoderKL(ModelMixin, nn.Cell):
    def __init__(self, **config):
        super().__init__()
        c = build_config("VAE", DEFAULTS, config)
        if c.act_fn != "silu":
            raise ValueError(f"unsupported VAE act_fn {c.act_fn!r} (Stable Diffusion's VAE uses silu)")
        self.config = c
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        latent = 2 * c.latent_channels
        self.quant_conv = InflatedConv3d(latent, latent, 1) if c.use_quant_conv else None
        self.post_quant_conv = (InflatedConv3d(c.latent_channels, c.latent_channels, 1)
                                if c.use_post_quant_conv else None)

    def encode(self, x):
        """Images [n, 3, h, w] -> posterior (mean, std), each [n, latent_channels, h/8, w/8]."""
        moments = self.encoder(x.expand_dims(2))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = ops.chunk(moments.squeeze(2), 2, 1)
        return mean, ops.exp(0.5 * ops.clamp(logvar, -30.0, 20.0))

    def decode(self, z):
        """Latents [n, latent_channels, h, w] (unscaled) -> images [n, 3, 8h, 8w]."""
        z = z.expand_dims(2)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).squeeze(2)

    def construct(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)
