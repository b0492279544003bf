"""Scaled dot-product attention over [batch, length, heads * dim] inputs, in the kernels each device runs.

attention_portable is MindSpore's ops and the reference. On CPU, MemoryEfficientAttention computes the same
numbers without the [lq, lk] scores in memory (the fused C++ kernel, or blocks of queries); on Ascend,
flash_attention wraps ops.flash_attention_score. Every kernel takes attention_portable's arguments.
"""
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import constexpr

from tuneavideo_ms.runtime.transpose import swap_axes_1_2

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


# fp32 scores per block of queries: big enough that MindSpore's per-op cost is small, small enough that
# a block's scores stay a small part of a training step's memory
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
    subtraction, which MindSpore 2.10's CPU kernels run an order of magnitude
    slower than same-shape arithmetic."""

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


# The fused kernel's cost per query row outweighs its gain on short rows of keys (temporal attention over
# frames runs faster on MindSpore's ops) and on small attention (no memory to save).
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


# FlashAttentionScore's documented limits: fp16 or bf16 inputs, 1 to 256 heads, head dims a multiple of 16
# up to 512, and (for some CANN versions) a batch of at most 2048
FLASH_MAX_HEADS = 256
FLASH_MAX_HEAD_DIM = 512
FLASH_MAX_BATCH = 2048
# rows of keys shorter than this (temporal attention over frames, whose batch is every pixel) run faster on
# MindSpore's plain ops
FLASH_MIN_KEYS = 64


def flash_attention(kernel):
    """An attention(q, k, v, heads, scale, upcast) running `kernel`, which has
    ops.flash_attention_score's signature, in its [batch, length, heads * dim]
    (BSH) layout: the layout our cells use, so no transposes. Head dims are
    zero-padded to a multiple of 16 (zeros change neither q.k nor, once cut
    off, the output), so SD 1.x's 40 and 80 qualify; the kernel's softmax is
    fp32 inside, so `upcast` holds.

    Only half-precision attention runs the kernel. fp32 inputs (a run without
    mixed precision) take the portable path: cast to fp16 for the kernel, their
    gradients would fall below fp16's range with no loss scale to lift them.
    Masked attention, short rows of keys and what exceeds the kernel's limits
    take it too."""
    def attention(q, k, v, heads, scale, upcast, mask=None):
        b, lq, inner = q.shape
        lk = k.shape[1]
        d = inner // heads
        if mask is not None or q.dtype == ms.float32 or lk < FLASH_MIN_KEYS or b > FLASH_MAX_BATCH or \
                heads > FLASH_MAX_HEADS or d > FLASH_MAX_HEAD_DIM:
            return attention_portable(q, k, v, heads, scale, upcast, mask)
        pad = -d % 16
        if pad:
            q, k, v = _pad_heads(q, heads, pad), _pad_heads(k, heads, pad), _pad_heads(v, heads, pad)
        out = kernel(q, k, v, heads, scalar_value=float(scale), input_layout="BSH")
        if pad:
            out = out.reshape(b, lq, heads, d + pad)[:, :, :, :d].reshape(b, lq, inner)
        return out
    return attention


def make_recomputable(model):
    """Prepares `model`'s memory-efficient attention for gradient checkpointing (cell.recompute()):
    MindSpore 2.10 finds a graph cycle in a cell's custom bprop inside a recomputed cell (the fused C++
    kernel, a custom operator, has none), so the blocks keep their probabilities instead; recomputed, they
    live only during their transformer block's backward anyway."""
    for _, cell in model.cells_and_names():
        if isinstance(cell, MemoryEfficientAttention):
            cell.core = BlockwiseSoftmaxAttention(cell.core.block)
