"""The video transformer of Tune-A-Video.

Per frame, a BasicTransformerBlock runs sparse-causal self-attention (attn1:
frame i attends to frames 0 and i-1), cross-attention to the text (attn2) and
a GEGLU feed-forward; then temporal attention (attn_temp) mixes the frames at
each spatial position.

Inside a Transformer3DModel the tokens are rows [(b f n), c], one per frame
and position, so that every projection is one MatMul on a 2-D input; the
attentions reshape to [sequences, length, c] with lengths known as Python
numbers (per-projection reshapes through nn.Dense cost a compile memory).
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import runtime
from .layers import Linear, gelu
from .normalization import GroupNorm, LayerNorm
from .resnet import conv_parameters


class CrossAttention(nn.Cell):
    """diffusers' Attention on rows: hidden_states [(s l), c] holds s sequences
    of l tokens, one token per row, the layout in which every projection is a
    single MatMul; only the attention itself sees [s, l, heads * dim]."""

    def __init__(self, query_dim, cross_attention_dim=None, heads=8, dim_head=64, dropout=0.0, bias=False,
                 upcast_attention=False):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.inner_dim = inner_dim
        self.scale = dim_head ** -0.5
        self.upcast_attention = upcast_attention
        self.to_q = Linear(query_dim, inner_dim, has_bias=bias)
        self.to_k = Linear(context_dim, inner_dim, has_bias=bias)
        self.to_v = Linear(context_dim, inner_dim, has_bias=bias)
        self.to_out = nn.CellList([Linear(inner_dim, query_dim), nn.Dropout(p=dropout)])
        self.attention = runtime.kernels().attention()

    def attend(self, hidden_states, key, value, length):
        """Rows [(s length), c] attend to key and value [s, keys, inner] -> rows [(s length), c]."""
        query = self.to_q(hidden_states).reshape(-1, length, self.inner_dim)
        out = self.attention(query, key, value, self.heads, self.scale, self.upcast_attention)
        return self.to_out[1](self.to_out[0](out.reshape(-1, self.inner_dim)))

    def construct(self, hidden_states, length, encoder_hidden_states=None):
        """hidden_states: rows of sequences of `length` tokens; encoder_hidden_states:
        [s, keys, d], one context per sequence, or None to attend within each sequence."""
        if encoder_hidden_states is None:
            context, keys = hidden_states, length
        else:
            _, keys, context_dim = encoder_hidden_states.shape
            context = encoder_hidden_states.reshape(-1, context_dim)
        key = self.to_k(context).reshape(-1, keys, self.inner_dim)
        value = self.to_v(context).reshape(-1, keys, self.inner_dim)
        return self.attend(hidden_states, key, value, length)


def sparse_causal_context(x, video_length, tokens):
    """Rows [(b f n), c] -> [(b f), 2n, c]: the tokens of frame 0 followed by
    those of frame i-1, for each frame i (frame 0 takes itself twice)."""
    c = x.shape[-1]
    x = x.reshape(-1, video_length, tokens, c)
    first = ops.broadcast_to(x[:, :1], (-1, video_length, tokens, c))
    previous = x
    if video_length > 1:
        previous = ops.concat((x[:, :1], x[:, :-1]), 1)
    return ops.concat((first, previous), 2).reshape(-1, 2 * tokens, c)


class SparseCausalAttention(CrossAttention):
    def construct(self, hidden_states, video_length, tokens):
        """hidden_states: rows [(b f n), c], one per frame and token."""
        key = sparse_causal_context(self.to_k(hidden_states), video_length, tokens)
        value = sparse_causal_context(self.to_v(hidden_states), video_length, tokens)
        return self.attend(hidden_states, key, value, tokens)


class GEGLU(nn.Cell):
    """Rows [n, dim_in] -> [n, dim_out]."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)
        self.kernel = runtime.kernels().native("geglu")
        # the projection runs again in the backward: its output, 8x the input,
        # would otherwise be kept for GELU's backward
        self.recompute()

    def construct(self, x):
        x = self.proj(x)
        if self.kernel is not None and x.dtype == ms.float32:
            return self.kernel(x)
        hidden, gate = ops.chunk(x, 2, -1)
        return hidden * gelu(gate)


class FeedForward(nn.Cell):
    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.CellList([GEGLU(dim, inner_dim), nn.Dropout(p=dropout), Linear(inner_dim, dim)])

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

    def construct(self, hidden_states, encoder_hidden_states, video_length, tokens):
        """hidden_states: rows [(b f n), dim], one per frame and token;
        encoder_hidden_states: [(b f), keys, d], the text of each frame."""
        norm_hidden_states = self.norm1(hidden_states)
        if self.only_cross_attention:
            hidden_states = self.attn1(norm_hidden_states, tokens, encoder_hidden_states) + hidden_states
        else:
            hidden_states = self.attn1(norm_hidden_states, video_length, tokens) + hidden_states
        if self.attn2 is not None:
            hidden_states = self.attn2(self.norm2(hidden_states), tokens,
                                       encoder_hidden_states) + hidden_states
        hidden_states = self.ff(self.norm3(hidden_states)) + hidden_states
        return self.temporal_attention(hidden_states, video_length, tokens)

    def temporal_attention(self, hidden_states, video_length, tokens):
        """Attention over the frames at each spatial position: rows (b f n) -> (b n f) and back."""
        c = hidden_states.shape[-1]
        x = runtime.swap_axes_1_2(hidden_states.reshape(-1, video_length, tokens, c)).reshape(-1, c)
        x = self.attn_temp(self.norm_temp(x), video_length) + x
        return runtime.swap_axes_1_2(x.reshape(-1, tokens, video_length, c)).reshape(-1, c)


class Transformer3DModel(nn.Cell):
    """[b, c, f, h, w] -> same shape: GroupNorm and projections per frame around
    a stack of BasicTransformerBlocks, with a residual connection."""

    # instances of one configuration compile as one graph (runtime.compile_child.share_graphs)
    shares_graph = True

    def __init__(self, num_attention_heads=16, attention_head_dim=88, in_channels=None, num_layers=1,
                 dropout=0.0, norm_num_groups=32, cross_attention_dim=None, attention_bias=False,
                 use_linear_projection=False, only_cross_attention=False, upcast_attention=False):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner_dim)
            self.proj_out = Linear(inner_dim, in_channels)
        else:
            # a 1x1 convolution is a Dense on channels; keep the conv's 4-D weight shape for checkpoints
            self.proj_in = PointwiseConv(in_channels, inner_dim)
            self.proj_out = PointwiseConv(inner_dim, in_channels)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, attention_bias=attention_bias,
                                  only_cross_attention=only_cross_attention,
                                  upcast_attention=upcast_attention)
            for _ in range(num_layers)])

    def construct(self, hidden_states, encoder_hidden_states):
        b, c, f, h, w = hidden_states.shape
        x = runtime.swap_axes_1_2(hidden_states.reshape(b, c, f, h * w)).reshape(b * f, c, h, w)
        n, ctx_dim = encoder_hidden_states.shape[1], encoder_hidden_states.shape[2]
        context = ops.broadcast_to(encoder_hidden_states.reshape(b, 1, n, ctx_dim), (b, f, n, ctx_dim))
        context = context.reshape(b * f, n, ctx_dim)
        residual = x
        # rows, one per frame and pixel: every projection is one MatMul
        x = runtime.swap_axes_1_2(self.norm(x).reshape(b * f, c, h * w, 1)).reshape(b * f * h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, f, h * w)
        x = self.proj_out(x)
        x = runtime.swap_axes_1_2(x.reshape(b * f, h * w, c, 1)).reshape(b * f, c, h, w) + residual
        return runtime.swap_axes_1_2(x.reshape(b, f, c, h * w)).reshape(b, c, f, h, w)


class PointwiseConv(nn.Cell):
    """A 1x1 Conv2d applied to rows of channels [n, c]; weight [out, in]
    ([out, in, 1, 1] in checkpoints)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.weight, self.bias = conv_parameters(self, in_channels, out_channels, 1, flat=True)
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        return ops.bias_add(self.matmul(x, self.weight.astype(x.dtype)), self.bias.astype(x.dtype))
