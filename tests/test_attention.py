"""Sparse-causal and temporal attention against a plain numpy transcription of the math."""
import mindspore as ms
import numpy as np

from conftest import rel_err
from tuneavideo_ms.models.attention import BasicTransformerBlock, SparseCausalAttention


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _multi_head(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head; q [n, c], k and v [m, c]."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        out.append(_softmax(q[:, s] @ k[:, s].T / np.sqrt(d)) @ v[:, s])
    return np.concatenate(out, -1)


def _weights(cell):
    return {n: p.asnumpy().astype(np.float64) for n, p in cell.parameters_and_names()}


def _randomise(cell, rng):
    for _, p in cell.parameters_and_names():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.3))


def _sparse_causal_numpy(x, w, frames, heads):
    """x [(b f), n, c]: frame i's queries attend to the keys/values of frames 0 and i-1."""
    b = x.shape[0] // frames
    q, k, v = (x @ w[f"{n}.weight"].T for n in ("to_q", "to_k", "to_v"))
    out = np.zeros_like(q)
    for bi in range(b):
        for i in range(frames):
            idx = bi * frames + i
            keys = [bi * frames, bi * frames + max(i - 1, 0)]
            out[idx] = _multi_head(q[idx], np.concatenate([k[j] for j in keys]),
                                   np.concatenate([v[j] for j in keys]), heads)
    return out @ w["to_out.0.weight"].T + w["to_out.0.bias"]


def test_sparse_causal_attention_equals_numpy(rng):
    frames, heads, dim = 4, 2, 16
    attn = SparseCausalAttention(dim, heads=heads, dim_head=dim // heads)
    _randomise(attn, rng)
    x = rng.standard_normal((2 * frames, 5, dim)).astype(np.float32)
    rows = (-1, dim)
    out = attn(ms.Tensor(x.reshape(rows)), frames, 5).asnumpy().reshape(x.shape)
    expected = _sparse_causal_numpy(x.astype(np.float64), _weights(attn), frames, heads)
    assert rel_err(out, expected) < 1e-5
    # frame 2 must not see frame 1's successor: changing frame 3 leaves frames 0-2 unchanged
    x2 = x.copy()
    x2[3] += 1.0
    out2 = attn(ms.Tensor(x2.reshape(rows)), frames, 5).asnumpy().reshape(x.shape)
    assert np.allclose(out2[:3], out[:3], atol=1e-6) and not np.allclose(out2[3], out[3], atol=1e-3)


def test_temporal_attention_equals_numpy(rng):
    """After the feed-forward, each spatial position attends over the frames, no positional encoding."""
    frames, heads, dim, tokens = 3, 2, 16, 6
    block = BasicTransformerBlock(dim, heads, dim // heads, cross_attention_dim=8)
    _randomise(block, rng)
    x = rng.standard_normal((2 * frames, tokens, dim)).astype(np.float32)
    out = block.temporal_attention(ms.Tensor(x.reshape(-1, dim)), frames, tokens).asnumpy().reshape(x.shape)

    w = {n[len("attn_temp."):]: p.asnumpy().astype(np.float64) for n, p in block.parameters_and_names()
         if n.startswith("attn_temp.")}
    g, beta = block.norm_temp.weight.asnumpy(), block.norm_temp.bias.asnumpy()
    x64 = x.astype(np.float64)
    expected = np.empty_like(x64)
    for b in range(2):
        for p in range(tokens):
            seq = x64[b * frames:(b + 1) * frames, p]                        # [frames, dim]
            normed = (seq - seq.mean(-1, keepdims=True)) / np.sqrt(seq.var(-1,
                                                                           keepdims=True) + 1e-5) * g + beta
            q, k, v = (normed @ w[f"{n}.weight"].T for n in ("to_q", "to_k", "to_v"))
            attended = _multi_head(q, k, v, heads) @ w["to_out.0.weight"].T + w["to_out.0.bias"]
            expected[b * frames:(b + 1) * frames, p] = attended + seq
    assert rel_err(out, expected) < 1e-5


def test_temporal_attention_starts_as_identity(rng):
    block = BasicTransformerBlock(16, 2, 8)
    x = rng.standard_normal((24, 16)).astype(np.float32)
    assert np.array_equal(block.temporal_attention(ms.Tensor(x), 3, 4).asnumpy(), x)
