"""GroupNorm and LayerNorm with diffusers' parameter names (weight, bias).

GroupNorm pools its statistics over every axis after the channels, so on a
5-D video tensor [b, c, f, h, w] the statistics span all frames, as the
original ResnetBlock3D's GroupNorm does; on [(b f), c, h, w] they are per frame.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
import numpy as np


class GroupNorm(nn.Cell):
    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = Parameter(Tensor(np.ones(num_channels, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(num_channels, np.float32)), name="bias")

    def construct(self, x):
        shape = x.shape
        g = x.astype(ms.float32).reshape(shape[0], self.num_groups, -1)
        mean = g.mean(-1, keep_dims=True)
        centred = g - mean
        var = (centred * centred).mean(-1, keep_dims=True)
        g = centred * ops.rsqrt(var + self.eps)
        affine_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
        y = g.reshape(shape) * self.weight.reshape(affine_shape) + self.bias.reshape(affine_shape)
        return y.astype(x.dtype)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="bias")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        y, _, _ = self.norm(x.astype(ms.float32), self.weight, self.bias)
        return y.astype(x.dtype)
