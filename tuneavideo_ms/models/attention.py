"""The video transformer of Tune-A-Video.

Per frame, a BasicTransformerBlock runs sparse-causal self-attention (attn1:
frame i attends to frames 0 and i-1), cross-attention to the text (attn2) and
a GEGLU feed-forward; then temporal attention (attn_temp) mixes the frames at
each spatial position.
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import backend, cpu_kernels
from .normalization import GroupNorm, LayerNorm
from .resnet import conv_parameters


class CrossAttention(nn.Cell):
    """diffusers' Attention: self-attention when no context is given."""

    def __init__(self, query_dim, cross_attention_dim=None, heads=8, dim_head=64, dropout=0.0, bias=False,
                 upcast_attention=False):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.upcast_attention = upcast_attention
        self.to_q = nn.Dense(query_dim, inner_dim, has_bias=bias)
        self.to_k = nn.Dense(context_dim, inner_dim, has_bias=bias)
        self.to_v = nn.Dense(context_dim, inner_dim, has_bias=bias)
        self.to_out = nn.CellList([nn.Dense(inner_dim, query_dim), nn.Dropout(p=dropout)])
        self.attention = backend.attention_kernel()

    def attend(self, hidden_states, key, value):
        out = self.attention(self.to_q(hidden_states), key, value, self.heads, self.scale, self.upcast_attention)
        return self.to_out[1](self.to_out[0](out))

    def construct(self, hidden_states, encoder_hidden_states=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return self.attend(hidden_states, self.to_k(context), self.to_v(context))


def sparse_causal_context(x, video_length):
    """[(b f), n, c] -> [(b f), 2n, c]: the tokens of frame 0 followed by those
    of frame i-1, for each frame i (frame 0 takes itself twice)."""
    bf, n, c = x.shape
    b = bf // video_length
    x = x.reshape(b, video_length, n, c)
    first = ops.broadcast_to(x[:, :1], (b, video_length, n, c))
    previous = x
    if video_length > 1:
        previous = ops.concat((x[:, :1], x[:, :-1]), 1)
    return ops.concat((first, previous), 2).reshape(bf, 2 * n, c)


class SparseCausalAttention(CrossAttention):
    def construct(self, hidden_states, video_length):
        key = sparse_causal_context(self.to_k(hidden_states), video_length)
        value = sparse_causal_context(self.to_v(hidden_states), video_length)
        return self.attend(hidden_states, key, value)


class GEGLU(nn.Cell):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Dense(dim_in, dim_out * 2)
        self.kernel = backend.cpu_kernel(cpu_kernels.geglu_op)
        # the projection runs again in the backward: its output, 8x the input,
        # would be kept for GELU's backward (mid training step: 123 of 735 MB)
        self.recompute()

    def construct(self, x):
        x = self.proj(x)
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1] + (x.shape[-1] // 2,))
        hidden, gate = ops.chunk(x, 2, -1)
        # exact (erf) GELU, as torch's default
        return hidden * (0.5 * gate * (1.0 + ops.erf(gate * 0.7071067811865476)))


class FeedForward(nn.Cell):
    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.CellList([GEGLU(dim, inner_dim), nn.Dropout(p=dropout), nn.Dense(inner_dim, dim)])

    def construct(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Cell):
    def __init__(self, dim, num_attention_heads, attention_head_dim, dropout=0.0, cross_attention_dim=None,
                 attention_bias=False, only_cross_attention=False, upcast_attention=False):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        attn_args = dict(heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                         bias=attention_bias, upcast_attention=upcast_attention)
        if only_cross_attention:
            self.attn1 = CrossAttention(dim, cross_attention_dim, **attn_args)
        else:
            self.attn1 = SparseCausalAttention(dim, **attn_args)
        self.norm1 = LayerNorm(dim)
        self.attn2 = None
        if cross_attention_dim is not None:
            self.attn2 = CrossAttention(dim, cross_attention_dim, **attn_args)
            self.norm2 = LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)
        self.norm3 = LayerNorm(dim)
        self.attn_temp = CrossAttention(dim, **attn_args)
        # A zero output projection (weight and bias) makes the inflated model
        # start exactly as the image model; the original zeroes only the weight.
        for p in self.attn_temp.to_out[0].get_parameters():
            p.set_data(Tensor(np.zeros(p.shape, np.float32)))
        self.norm_temp = LayerNorm(dim)

    def construct(self, hidden_states, encoder_hidden_states, video_length):
        norm_hidden_states = self.norm1(hidden_states)
        if self.only_cross_attention:
            hidden_states = self.attn1(norm_hidden_states, encoder_hidden_states) + hidden_states
        else:
            hidden_states = self.attn1(norm_hidden_states, video_length) + hidden_states
        if self.attn2 is not None:
            hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states) + hidden_states
        hidden_states = self.ff(self.norm3(hidden_states)) + hidden_states
        return self.temporal_attention(hidden_states, video_length)

    def temporal_attention(self, hidden_states, video_length):
        """Attention over the frames at each spatial position: (b f) d c -> (b d) f c."""
        bf, d, c = hidden_states.shape
        b = bf // video_length
        x = backend.swap_axes_1_2(hidden_states.reshape(b, video_length, d, c)).reshape(b * d, video_length, c)
        x = self.attn_temp(self.norm_temp(x)) + x
        return backend.swap_axes_1_2(x.reshape(b, d, video_length, c)).reshape(bf, d, c)


class Transformer3DModel(nn.Cell):
    """[b, c, f, h, w] -> same shape: GroupNorm and projections per frame around
    a stack of BasicTransformerBlocks, with a residual connection."""

    def __init__(self, num_attention_heads=16, attention_head_dim=88, in_channels=None, num_layers=1, dropout=0.0,
                 norm_num_groups=32, cross_attention_dim=None, attention_bias=False, use_linear_projection=False,
                 only_cross_attention=False, upcast_attention=False):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Dense(in_channels, inner_dim)
            self.proj_out = nn.Dense(inner_dim, in_channels)
        else:
            # a 1x1 convolution is a Dense on channels; keep the conv's 4-D weight shape for checkpoints
            self.proj_in = PointwiseConv(in_channels, inner_dim)
            self.proj_out = PointwiseConv(inner_dim, in_channels)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, attention_bias=attention_bias,
                                  only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
            for _ in range(num_layers)])

    def construct(self, hidden_states, encoder_hidden_states):
        b, c, f, h, w = hidden_states.shape
        x = backend.swap_axes_1_2(hidden_states.reshape(b, c, f, h * w)).reshape(b * f, c, h, w)
        n, ctx_dim = encoder_hidden_states.shape[1], encoder_hidden_states.shape[2]
        context = ops.broadcast_to(encoder_hidden_states.reshape(b, 1, n, ctx_dim), (b, f, n, ctx_dim))
        context = context.reshape(b * f, n, ctx_dim)
        residual = x
        x = backend.swap_axes_1_2(self.norm(x).reshape(b * f, c, h * w, 1)).reshape(b * f, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, f)
        x = self.proj_out(x)
        x = backend.swap_axes_1_2(x.reshape(b * f, h * w, c, 1)).reshape(b * f, c, h, w) + residual
        return backend.swap_axes_1_2(x.reshape(b, f, c, h * w)).reshape(b, c, f, h, w)


class PointwiseConv(nn.Cell):
    """A 1x1 Conv2d applied to channel-last tokens [n, l, c]; weight [out, in]
    ([out, in, 1, 1] in checkpoints)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.weight, self.bias = conv_parameters(self, in_channels, out_channels, 1, flat=True)
        self.out_channels = out_channels
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        n, length, c = x.shape
        w = self.weight.astype(x.dtype)
        out = ops.bias_add(self.matmul(x.reshape(n * length, c), w), self.bias.astype(x.dtype))
        return out.reshape(n, length, self.out_channels)
