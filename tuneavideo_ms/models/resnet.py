"""The convolutional parts of the video UNet: every 2D convolution is applied
frame by frame, every GroupNorm sees the whole clip."""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .. import runtime
from .layers import Linear
from .normalization import GroupNorm


def conv_parameters(cell, in_channels, out_channels, kernel_size, flat):
    """Weight and bias of a Conv2d with torch's default init (kaiming-uniform,
    a=sqrt(5)): uniform in +-1/sqrt(fan_in). A `flat` weight is stored
    [out, in * k * k], the layout MatMul reads; the cell then records the 4-D
    shape checkpoints hold (weights.state_dict and load_into convert)."""
    bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
    shape = (out_channels, in_channels, kernel_size, kernel_size)
    weight = np.random.uniform(-bound, bound, shape).astype(np.float32)
    bias = np.random.uniform(-bound, bound, out_channels).astype(np.float32)
    if flat:
        cell.checkpoint_shapes = {"weight": shape}
        weight = weight.reshape(out_channels, -1)
    return Parameter(Tensor(weight), name="weight"), Parameter(Tensor(bias), name="bias")


class InflatedConv3d(nn.Cell):
    """A 2D convolution applied to each frame: [b, c, f, h, w] -> [b, c', f, h', w'].

    Weight and bias have the 2D convolution's names and, in checkpoints, shapes,
    so image checkpoints load as is."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = runtime.kernels().conv(kernel_size, stride, padding)
        self.weight, self.bias = conv_parameters(self, in_channels, out_channels, kernel_size,
                                                 flat=self.conv.flat_weight)

    def construct(self, x):
        return self.conv(x, self.weight.astype(x.dtype), self.bias.astype(x.dtype))


class Upsample3D(nn.Cell):
    """Nearest-neighbour upsampling of each frame, then a 3x3 convolution.

    The output is twice the input, or `output_size` (the skip connection's
    height and width, one less than twice when a downsampler met an odd size):
    nearest interpolation to 2h - 1 picks the same pixels as doubling and
    dropping the last row."""

    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.conv = InflatedConv3d(channels, out_channels or channels, 3, padding=1)

    def construct(self, x, output_size=None):
        b, c, f, h, w = x.shape
        x = ops.broadcast_to(x.reshape(b, c, f, h, 1, w, 1), (b, c, f, h, 2, w, 2))
        x = x.reshape(b, c, f, 2 * h, 2 * w)
        if output_size is not None and (output_size[0] != 2 * h or output_size[1] != 2 * w):
            x = x[:, :, :, :output_size[0], :output_size[1]]
        return self.conv(x)


class Downsample3D(nn.Cell):
    """A stride-2 3x3 convolution of each frame."""

    def __init__(self, channels, out_channels=None, padding=1):
        super().__init__()
        self.padding = padding
        self.conv = InflatedConv3d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def construct(self, x):
        if self.padding == 0:
            # diffusers pads right and bottom only in this case
            x = ops.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class ResnetBlock3D(nn.Cell):
    """diffusers' ResnetBlock2D on video: convolutions per frame, GroupNorm over
    the whole clip. `time_embedding_norm` "scale_shift" applies the timestep
    embedding as a FiLM after norm2 instead of adding it before."""

    def __init__(self, in_channels, out_channels=None, temb_channels=512, groups=32, groups_out=None,
                 eps=1e-6, dropout=0.0, time_embedding_norm="default", output_scale_factor=1.0):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"resnet_time_scale_shift {time_embedding_norm!r} is not supported "
                             "(use 'default' or 'scale_shift')")
        out_channels = out_channels or in_channels
        self.scale_shift = time_embedding_norm == "scale_shift"
        self.output_scale_factor = output_scale_factor
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = InflatedConv3d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = None
        if temb_channels is not None:
            self.time_emb_proj = Linear(temb_channels, out_channels * (2 if self.scale_shift else 1))
        self.norm2 = GroupNorm(groups_out or groups, out_channels, eps)
        self.dropout = nn.Dropout(p=dropout)
        self.conv2 = InflatedConv3d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = InflatedConv3d(in_channels, out_channels, 1)

    def construct(self, x, temb=None):
        h = self.conv1(ops.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            t = self.time_emb_proj(ops.silu(temb))
            t = t.reshape(t.shape[0], t.shape[1], 1, 1, 1).astype(h.dtype)
            if self.scale_shift:
                scale, shift = ops.chunk(t, 2, 1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + t)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(ops.silu(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        # a product: MindSpore 2.10's CPU Div holds several times its output for as long as the graph lives
        return (x + h) * (1.0 / self.output_scale_factor)
