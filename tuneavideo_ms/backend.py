"""Device, execution mode, precision and the per-backend kernels.

This is the one module that knows about hardware. Model cells ask it for their
convolution and attention kernels when they are built; every kernel here
computes the same numbers as the portable one (tests compare them).
"""
import logging
import os

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.ops import constexpr

from tuneavideo_ms import cpu_kernels

logger = logging.getLogger(__name__)

DEVICES = ("Ascend", "GPU", "CPU")
_state = {"device": None, "mode": None, "kernels": "auto", "library": None}


def setup(device=None, mode="graph", kernels=None):
    """Pick the device (Ascend, then GPU, then CPU unless `device` or
    TUNEAVIDEO_DEVICE says otherwise), the execution mode ("graph" or
    "pynative") and the kernel set ("auto" or "portable", also from
    TUNEAVIDEO_KERNELS).
    Call before building models: cells take their kernels when constructed."""
    requested = device or os.environ.get("TUNEAVIDEO_DEVICE") or _detect_device()
    device = {d.lower(): d for d in DEVICES}.get(requested.lower())
    if device is None:
        raise ValueError(f"unknown device {requested!r}; choose one of {', '.join(DEVICES)}")
    if mode not in ("graph", "pynative"):
        raise ValueError(f"mode must be 'graph' or 'pynative', not {mode!r}")
    kernels = kernels or os.environ.get("TUNEAVIDEO_KERNELS", "auto")
    if kernels not in ("auto", "portable"):
        raise ValueError(f"kernels must be 'auto' or 'portable', not {kernels!r}")
    if device == "CPU":
        # MindSpore's host pipeline waits for a graph run in a loop that never
        # yields, a core lost for the whole run when the host is the device
        # (mid training step on 2 cores: 6.6-7.2 s -> 4.3-4.5 s)
        os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
    ms.set_device(device, device_id(device))
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    global _swap_axes
    library = cpu_kernels.build_library() if device == "CPU" and kernels == "auto" else None
    _state.update(device=device, mode=mode, kernels=kernels, library=library)
    _swap_axes = cpu_kernel(cpu_kernels.swap_axes_op)
    logger.info("backend: device=%s mode=%s kernels=%s", device, mode, kernels)
    return device


def device_id(device):
    """The card this process runs on: msrun sets its own workers' cards; a launcher running one job per
    card says which in DEVICE_ID (tools/launch_edit.sh does); else None, MindSpore's default (card 0)."""
    value = os.environ.get("DEVICE_ID")
    if device == "CPU" or "MS_ROLE" in os.environ or value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"DEVICE_ID must be a card number such as 0, not {value!r}")
    return int(value)


def _detect_device():
    # hal.is_available logs a warning for every missing plugin; silence it here.
    ms_logger = logging.getLogger("mindspore")
    level = ms_logger.level
    ms_logger.setLevel(logging.ERROR)
    try:
        for device in ("Ascend", "GPU"):
            if ms.hal.is_available(device):
                return device
    finally:
        ms_logger.setLevel(level)
    return "CPU"


def device():
    """The device in use: the one `setup` chose, else MindSpore's current target."""
    return _state["device"] or ms.get_context("device_target")


def check_dtype(dtype):
    """bf16 matmuls have no CPU kernel in MindSpore 2.10; say so up front."""
    if dtype == ms.bfloat16 and device() == "CPU":
        raise ValueError("bf16 needs an Ascend device: MindSpore has no bf16 MatMul kernel on CPU; use fp16 or "
                         "float32 (mixed_precision: fp16 or no)")


# ----------------------------------------------------------------------------- transposes

_swap_axes = None  # the CPU kernel, set by setup()


def swap_axes_1_2(x):
    """[A, B, C, D] -> [A, C, B, D]: every transpose of the video UNet, once
    reshaped. On CPU a C++ kernel: MindSpore's CPU Transpose holds twice its
    output's size for as long as its graph lives (a mid training step: GBs)."""
    if _swap_axes is not None:
        return _swap_axes(x)
    return x.transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------- CPU kernels of cells

def cpu_kernel(make_op):
    """make_op(library), one of cpu_kernels' operators, on CPU (GroupNorm,
    GEGLU); None elsewhere, for the cell's MindSpore ops."""
    library = _state["library"]
    return make_op(library) if library else None


# ----------------------------------------------------------------------------- convolution

def conv2d_portable(x, weight, bias, kernel_size, stride, padding):
    """MindSpore's own convolution: the path for Ascend and GPU; weight
    [out, in, k, k] (`kernel_size` is in its shape)."""
    return ops.bias_add(ops.conv2d(x, weight, None, stride=stride, pad_mode="pad", padding=padding), bias)


# Primitives rather than ops.matmul, whose backward in a training graph holds
# about 2.7x the size of a frozen weight in memory, kept for the whole run
# (a [1280, 11520] conv weight of SD 1.5: 59 MB weight, +160 MB)
_matmul = ops.MatMul()
_batch_matmul = ops.BatchMatMul()


def conv2d_matmul(x, weight, bias, kernel_size, stride, padding):
    """Convolution as Im2Col and MatMul, for CPU, where MindSpore's conv
    kernel runs at about 0.5 GFLOP/s and MatMul at about 60: the path when
    no C++ compiler builds ClipIm2ColConv's kernel. The weight is
    [out, in * k * k], the layout MatMul reads: in a MindSpore 2.10 training
    graph the reshape of a 4-D Parameter is a copy kept until the backward
    (every convolution weight of SD 1.5: 2.2 GiB)."""
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


class ClipIm2ColConv(nn.Cell):
    """FrameConv's numbers as one MatMul over the columns of the whole clip
    (cpu_kernels.video_im2col_op), whose output is already in the clip's
    layout: no transposes, and no copy of the weight per frame, which
    conv2d_matmul's batched product makes and a training graph keeps for the
    backward. Weight [out, in * k * k]. The kernel is float32; other dtypes
    take conv2d_matmul per frame, and so does mixed precision, since
    Cell.to_float casts a custom operator's float32 inputs too."""

    flat_weight = True
    fp16 = bf16 = False  # Cell.to_float sets them (as add_flags attributes)

    def __init__(self, library, kernel_size, stride, padding):
        super().__init__()
        self.im2col = cpu_kernels.video_im2col_op(library)
        self.geometry = ms.Tensor(np.zeros((kernel_size, stride, padding + 1), np.float32))
        self.frames = FrameConv(conv2d_matmul, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def construct(self, x, weight, bias):
        if x.dtype != ms.float32 or self.fp16 or self.bf16:
            return self.frames(x, weight, bias)
        b, c, f, h, w = x.shape
        o = weight.shape[0]
        if self.kernel_size == 1 and self.stride == 1 and self.padding == 0:
            cols = x.reshape(b, c, f * h * w)  # already the columns
        else:
            cols = self.im2col(x, self.geometry)
        k, length = cols.shape[1], cols.shape[2]
        if b == 1:
            out = _matmul(weight, cols.reshape(k, length))
        else:
            out = _batch_matmul(ops.broadcast_to(weight, (b, o, k)), cols)
        out = ops.bias_add(out.reshape(b, o, length), bias)
        out_h = cpu_kernels.conv_output_size(h, self.kernel_size, self.stride, self.padding)
        out_w = cpu_kernels.conv_output_size(w, self.kernel_size, self.stride, self.padding)
        return out.reshape(b, o, f, out_h, out_w)


def conv_kernel(kernel_size, stride, padding):
    """The per-frame convolution cell of this backend: (x [b, c, f, h, w],
    weight, bias) -> [b, c', f, h', w']; its `flat_weight` says whether the
    weight is [out, in * k * k] or [out, in, k, k]."""
    if _state["kernels"] == "auto" and device() == "CPU":
        if _state["library"]:
            return ClipIm2ColConv(_state["library"], kernel_size, stride, padding)
        return FrameConv(conv2d_matmul, kernel_size, stride, padding)
    return FrameConv(conv2d_portable, kernel_size, stride, padding)


# ----------------------------------------------------------------------------- attention

def attention_portable(q, k, v, heads, scale, upcast, mask=None):
    """Scaled dot-product attention over [batch, length, heads * dim] inputs;
    `mask` is added to the scores (e.g. -inf above the diagonal for causal)."""
    b, lq, inner = q.shape
    lk = k.shape[1]
    d = inner // heads
    dtype = q.dtype
    q = swap_axes_1_2(q.reshape(b, lq, heads, d))
    k = swap_axes_1_2(k.reshape(b, lk, inner, 1)).reshape(b, heads, d, lk)
    v = swap_axes_1_2(v.reshape(b, lk, heads, d))
    if upcast:
        q, k = q.astype(ms.float32), k.astype(ms.float32)
    # the scale goes on q, and fp32 scores are not cast: each [lq, lk] tensor
    # saved for the backward is memory that 8 frames of 32x32 latents measure in GB
    scores = ops.matmul(q * scale, k)
    if mask is not None:
        scores = scores + mask
    if scores.dtype == ms.float32:
        probs = ops.softmax(scores, axis=-1)
    else:
        probs = ops.softmax(scores.astype(ms.float32), axis=-1)
    out = ops.matmul(probs.astype(dtype), v)
    return swap_axes_1_2(out).reshape(b, lq, inner)


# about 64 MB of fp32 scores per block of queries: big enough that MindSpore's
# per-op cost is small, small enough that 8 frames of 32x32 latents train in GBs
SCORES_BLOCK = 2 ** 24


class BlockwiseSoftmaxAttention(nn.Cell):
    """softmax(q k^T) v over [n, length, dim] inputs, q already scaled, a block
    of queries at a time, so that the [lq, lk] scores never exist whole."""

    def __init__(self, block=SCORES_BLOCK):
        super().__init__()
        self.block = block
        self.scores = ops.BatchMatMul(transpose_b=True)
        self.matmul = ops.BatchMatMul()
        self.matmul_ta = ops.BatchMatMul(transpose_a=True)
        self.softmax = ops.Softmax(-1)
        self.concat_rows = ops.Concat(1)
        self.concat_cols = ops.Concat(-1)
        self.rowsum = ops.ReduceSum(keep_dims=True)
        self.ones = ops.Ones()

    def _split(self, x, k):
        return ops.Split(1, _query_blocks(x.shape[0], x.shape[1], k.shape[1], self.block))(x)

    def construct(self, q, k, v):
        outs = ()
        last = q
        for block in self._split(q, k):
            # one block after the other, so that only one block of scores is alive
            block = ops.depend(block, last)
            last = self.matmul(self.softmax(self.scores(block, k)), v)
            outs = outs + (last,)
        return self.concat_rows(outs)


class RecomputingBlockwiseSoftmaxAttention(BlockwiseSoftmaxAttention):
    """BlockwiseSoftmaxAttention whose backward recomputes each block's
    probabilities instead of keeping them, as FlashAttention does: the scores
    are never saved for the backward either.

    The backward of softmax, p * (dp - rowsum(dp * p)), is computed as
    p * ([dout, -rowsum(dout * out)] @ [v, 1]^T): rowsum(dp * p) equals
    rowsum(dout * out), and folding it into the matmul avoids a broadcasting
    subtraction, which MindSpore's CPU kernels run about 13x slower than
    same-shape arithmetic."""

    def bprop(self, q, k, v, out, dout):
        dk, dv = ops.zeros_like(k), ops.zeros_like(v)
        dq = dk
        dqs = ()
        v_ones = self.concat_cols((v, self.ones((v.shape[0], v.shape[1], 1), v.dtype)))
        dout_rowsum = self.concat_cols((dout, -self.rowsum(dout * out, -1)))
        for block, dout_block, dout_rowsum_block in zip(self._split(q, k), self._split(dout, k),
                                                          self._split(dout_rowsum, k)):
            # every update from the previous block first, or its probabilities stay alive
            block = ops.depend(ops.depend(ops.depend(block, dk), dv), dq)
            probs = self.softmax(self.scores(block, k))
            dv = dv + self.matmul_ta(probs, dout_block)
            dscores = probs * self.scores(dout_rowsum_block, v_ones)
            dq = self.matmul(dscores, k)
            dqs = dqs + (dq,)
            dk = dk + self.matmul_ta(dscores, block)
        return self.concat_rows(dqs), dk, dv


@constexpr
def _query_blocks(n, lq, lk, block):
    """Into how many equal blocks of query rows to split: blocks of at most
    about `block` scores (the largest divisor of lq under the bound). Evaluated
    while compiling, so that a custom bprop, which may hold no branch, can use it."""
    rows = max(1, block // (n * lk))
    return next(lq // r for r in range(min(rows, lq), 0, -1) if lq % r == 0)


# The fused kernel's cost per query row outweighs its gain on short rows of
# keys (temporal attention over frames: 2x slower than portable forward and
# backward at 8 keys) and on small attention (no memory to save).
FUSED_MIN_KEYS = 64
FUSED_MIN_SCORES = 2 ** 20


class MemoryEfficientAttention(nn.Cell):
    """attention_portable's signature and numbers without [lq, lk] scores in
    memory: the fused C++ kernel (cpu_kernels.FusedAttention) when given
    one, the inputs are float32 and the attention is large, else blocks of queries
    (RecomputingBlockwiseSoftmaxAttention). Masked attention (the text
    encoder's causal one) takes the portable path, and so does, without the
    fused kernel, attention whose scores fit in one block: blocks would save
    nothing there, and each custom backward adds seconds to a training
    graph's compile."""

    def __init__(self, block=SCORES_BLOCK, fused=None):
        super().__init__()
        self.core = RecomputingBlockwiseSoftmaxAttention(block)
        self.fused = fused

    def construct(self, q, k, v, heads, scale, upcast, mask=None):
        b, lq, inner = q.shape
        lk = k.shape[1]
        d = inner // heads
        if mask is None and self.fused is not None and q.dtype == ms.float32 and lk >= FUSED_MIN_KEYS and \
                b * heads * lq * lk >= FUSED_MIN_SCORES:
            # the kernel reads the heads in place: reshapes only, no transposes
            out = self.fused((q * scale).reshape(b, lq, heads, d), k.reshape(b, lk, heads, d),
                             v.reshape(b, lk, heads, d))
            return out.reshape(b, lq, inner)
        if mask is not None or b * heads * lq * lk <= self.core.block:
            return attention_portable(q, k, v, heads, scale, upcast, mask)
        dtype = q.dtype
        q, k, v = _fold_heads(q * scale, heads), _fold_heads(k, heads), _fold_heads(v, heads)
        if upcast:
            q, k, v = q.astype(ms.float32), k.astype(ms.float32), v.astype(ms.float32)
        out = self.core(q, k, v).astype(dtype)
        return swap_axes_1_2(out.reshape(b, heads, lq, d)).reshape(b, lq, inner)


def _fold_heads(x, heads):
    """[b, length, heads * d] -> [b * heads, length, d]"""
    b, length, inner = x.shape
    return swap_axes_1_2(x.reshape(b, length, heads, inner // heads)).reshape(b * heads, length, -1)


def _pad_heads(x, heads, pad):
    b, length, inner = x.shape
    return ops.pad(x.reshape(b, length, heads, inner // heads), (0, pad)).reshape(b, length, -1)


FLASH_MAX_HEAD_DIM = 512  # FlashAttentionScore: head dims a multiple of 16, at most 512; fp16/bf16 only


def flash_attention(kernel, half=ms.float16):
    """An attention(q, k, v, heads, scale, upcast) running `kernel`, which has
    ops.flash_attention_score's signature, in its [batch, length, heads * dim]
    (BSH) layout: the layout our cells use, so no transposes. Head dims are
    zero-padded to a multiple of 16 (zeros change neither q.k nor, once cut
    off, the output), so SD 1.x's 40 and 80 qualify; fp32 inputs run in `half`
    (the kernel's softmax is fp32 inside, so `upcast` holds). Tests plug the
    portable attention in as `kernel` with half=None."""
    def attention(q, k, v, heads, scale, upcast, mask=None):
        b, lq, inner = q.shape
        d = inner // heads
        if mask is not None or d > FLASH_MAX_HEAD_DIM:
            return attention_portable(q, k, v, heads, scale, upcast, mask)
        dtype, pad = q.dtype, -d % 16
        if pad:
            q, k, v = _pad_heads(q, heads, pad), _pad_heads(k, heads, pad), _pad_heads(v, heads, pad)
        if half is not None and dtype == ms.float32:
            q, k, v = q.astype(half), k.astype(half), v.astype(half)
        out = kernel(q, k, v, heads, scalar_value=scale, input_layout="BSH").astype(dtype)
        if pad:
            out = out.reshape(b, lq, heads, d + pad)[:, :, :, :d].reshape(b, lq, inner)
        return out
    return attention


def attention_kernel():
    # FlashAttentionScore serves spatial (sparse-causal), cross and temporal attention alike
    if _state["kernels"] == "auto" and device() == "Ascend":
        return flash_attention(ops.flash_attention_score)
    if _state["kernels"] == "auto" and device() == "CPU":
        return MemoryEfficientAttention(fused=cpu_kernels.fused_attention())
    return attention_portable
