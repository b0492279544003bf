"""GroupNorm and LayerNorm with diffusers' parameter names (weight, bias).

GroupNorm pools its statistics over every axis after the channels, so on a
5-D video tensor [b, c, f, h, w] the statistics span all frames, as the
original ResnetBlock3D's GroupNorm does; on [(b f), c, h, w] they are per frame.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
import numpy as np

from .. import runtime


class GroupNorm(nn.Cell):
    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.weight = Parameter(Tensor(np.ones(num_channels, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(num_channels, np.float32)), name="bias")
        # each group's statistics (the runtime's kernel for this device); the per-channel affine follows
        self.statistics = runtime.kernels().group_statistics(eps)
        self.kernel = runtime.kernels().native("group_norm")
        self.eps = Tensor(np.array([eps], np.float32))

    def construct(self, x):
        shape = x.shape
        if self.kernel is not None and x.dtype == ms.float32:
            return _kernel_norm(self, x.reshape(shape[0], self.num_groups, -1)).reshape(shape)
        g = self.statistics(x.reshape(shape[0] * self.num_groups, -1))
        # 4-D: MindSpore's CPU BiasAddGrad refuses a 3-D input whose last axis is 1 (a GroupNorm at 1x1)
        y = ops.bias_add(g.reshape(shape[0], shape[1], -1, 1) * self.weight.reshape(1, -1, 1, 1), self.bias)
        return y.reshape(shape).astype(x.dtype)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="bias")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.kernel = runtime.kernels().native("group_norm")
        self.eps = Tensor(np.array([eps], np.float32))

    def construct(self, x):
        if self.kernel is not None and x.dtype == ms.float32:
            # one group: the last axis
            return _kernel_norm(self, x.reshape(-1, 1, x.shape[-1])).reshape(x.shape)
        y, _, _ = self.norm(x.astype(ms.float32), self.weight, self.bias)
        return y.astype(x.dtype)


def _kernel_norm(norm, grouped):
    """`norm`'s C++ kernel (float32 only: under mixed precision, Cell.to_float,
    MindSpore casts the kernel's inputs to the half type whatever the cell
    casts them to) over grouped [n, groups, length]."""
    return norm.kernel(grouped, norm.weight.astype(ms.float32), norm.bias.astype(ms.float32), norm.eps)[0]
