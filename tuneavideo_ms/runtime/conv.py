"""The convolutions of the video UNet: each frame of a clip [b, c, f, h, w] through a 2-D convolution.

Three ways, one set of numbers (tests compare them): MindSpore's own convolution (Ascend, GPU, and the
portable kernels anywhere), Im2Col and MatMul per frame (CPU without a C++ compiler: MindSpore's CPU
convolution is far slower than its MatMul), and one MatMul over the columns of the whole clip from a C++
im2col (CPU). The matmul paths keep weights as [out, in * k * k] (`flat_weight`), the layout MatMul reads.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from tuneavideo_ms.runtime import cpu_kernels
from tuneavideo_ms.runtime.transpose import swap_axes_1_2

def conv2d_portable(x, weight, bias, kernel_size, stride, padding):
    """MindSpore's own convolution: the path for Ascend and GPU; weight
    [out, in, k, k] (`kernel_size` is in its shape)."""
    return ops.bias_add(ops.conv2d(x, weight, None, stride=stride, pad_mode="pad", padding=padding), bias)


# Primitives rather than ops.matmul, whose backward in a MindSpore 2.10 training graph holds several times
# the size of a frozen weight in memory, kept for the whole run
_matmul = ops.MatMul()
_batch_matmul = ops.BatchMatMul()


def conv2d_matmul(x, weight, bias, kernel_size, stride, padding):
    """Convolution as Im2Col and MatMul, for CPU, where MindSpore's conv
    kernel is far slower than its MatMul: the path when no C++ compiler
    builds ClipIm2ColConv's kernel. The weight is
    [out, in * k * k], the layout MatMul reads: in a MindSpore 2.10 training
    graph the reshape of a 4-D Parameter is a copy kept until the backward."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    out_h = cpu_kernels.conv_output_size(h, kernel_size, stride, padding)
    out_w = cpu_kernels.conv_output_size(w, kernel_size, stride, padding)
    if kernel_size == 1 and padding == 0 and stride == 1:
        cols = x.reshape(n, c, h * w)
    else:
        cols = ops.unfold(x, (kernel_size, kernel_size), padding=padding, stride=stride)
    k, length = cols.shape[1], cols.shape[2]
    if o <= length:
        # one product per image (CPU BatchMatMul does not broadcast)
        out = _batch_matmul(ops.broadcast_to(weight, (n, o, k)), cols)
    else:
        # deep, small levels, where that broadcast would cost more than the
        # product: the images side by side in one matrix instead
        out = _matmul(weight, swap_axes_1_2(cols.reshape(1, n, k, length)).reshape(k, n * length))
        out = swap_axes_1_2(out.reshape(1, o, n, length))
    return ops.bias_add(out.reshape(n, o, out_h, out_w), bias)


class FrameConv(nn.Cell):
    """A 2-D convolution, conv2d_portable or conv2d_matmul, of each frame of
    x [b, c, f, h, w]: the frames folded into the batch and back."""

    def __init__(self, conv2d, kernel_size, stride, padding):
        super().__init__()
        self.conv2d = conv2d
        self.flat_weight = conv2d is conv2d_matmul
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def construct(self, x, weight, bias):
        b, c, f, h, w = x.shape
        x = swap_axes_1_2(x.reshape(b, c, f, h * w)).reshape(b * f, c, h, w)
        x = self.conv2d(x, weight, bias, self.kernel_size, self.stride, self.padding)
        _, c, h, w = x.shape
        return swap_axes_1_2(x.reshape(b, f, c, h * w)).reshape(b, c, f, h, w)


# Frames of at least this many pixels go through MindSpore's own convolution (oneDNN on CPU), which outran
# the im2col and MatMul from 64x64 frames up in bench/conv.py; only the VAE's outer levels are this large
# (the UNet's latents, which training differentiates through, are smaller).
NATIVE_CONV_MIN_PIXELS = 128 * 128


class ClipIm2ColConv(nn.Cell):
    """FrameConv's numbers as one MatMul over the columns of the whole clip
    (cpu_kernels.video_im2col_op), whose output is already in the clip's
    layout: no transposes, and no copy of the weight per frame, which
    conv2d_matmul's batched product makes and a training graph keeps for the
    backward. Weight [out, in * k * k]. The kernel is float32; other dtypes
    take conv2d_matmul per frame, and so does mixed precision, since
    Cell.to_float casts a custom operator's float32 inputs too. Large frames
    (NATIVE_CONV_MIN_PIXELS) take MindSpore's convolution per frame."""

    flat_weight = True
    fp16 = bf16 = False  # Cell.to_float sets them (as add_flags attributes)

    def __init__(self, library, kernel_size, stride, padding):
        super().__init__()
        self.im2col = cpu_kernels.video_im2col_op(library)
        self.settings_as_shape = ms.Tensor(np.zeros((kernel_size, stride, padding + 1), np.float32))
        self.frames = FrameConv(conv2d_matmul, kernel_size, stride, padding)
        self.native = FrameConv(conv2d_portable, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def construct(self, x, weight, bias):
        if x.dtype != ms.float32 or self.fp16 or self.bf16:
            return self.frames(x, weight, bias)
        b, c, f, h, w = x.shape
        o = weight.shape[0]
        if h * w >= NATIVE_CONV_MIN_PIXELS:
            return self.native(x, weight.reshape(o, c, self.kernel_size, self.kernel_size), bias)
        if self.kernel_size == 1 and self.stride == 1 and self.padding == 0:
            cols = x.reshape(b, c, f * h * w)  # already the columns
        else:
            cols = self.im2col(x, self.settings_as_shape)
        k, length = cols.shape[1], cols.shape[2]
        if b == 1:
            out = _matmul(weight, cols.reshape(k, length))
        else:
            out = _batch_matmul(ops.broadcast_to(weight, (b, o, k)), cols)
        out = ops.bias_add(out.reshape(b, o, length), bias)
        out_h = cpu_kernels.conv_output_size(h, self.kernel_size, self.stride, self.padding)
        out_w = cpu_kernels.conv_output_size(w, self.kernel_size, self.stride, self.padding)
        return out.reshape(b, o, f, out_h, out_w)
