"""Layers shared by the UNet and the text encoder, with torch's parameter names."""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops


class Linear(nn.Dense):
    """nn.Dense (the same parameters) on rows [n, c] only: a MatMul and a
    BiasAdd. nn.Dense takes any rank through shape checks and a reshape to
    2-D and back, whose shape arithmetic a compile pays per call, in
    compiler memory, for every call on 3-D input in a gradient graph."""

    def construct(self, x):
        x = self.matmul(x, self.weight)
        if self.has_bias:
            x = self.bias_add(x, self.bias)
        return x


class Embedding(nn.Cell):
    """A lookup table (weight [num, dim], initialised N(0, std)) of integer ids."""

    def __init__(self, num, dim, std=1.0):
        super().__init__()
        self.weight = Parameter(Tensor(np.random.normal(0, std, (num, dim)).astype(np.float32)),
                                name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids.astype(ms.int32), 0)


def gelu(x):
    """The exact (erf) GELU, torch's default."""
    return 0.5 * x * (1.0 + ops.erf(x * (1 / math.sqrt(2))))
