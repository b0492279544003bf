import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from conftest import rel_err
from tuneavideo_ms import runtime
from tuneavideo_ms.runtime import attention as attention_kernels
from tuneavideo_ms.runtime import conv as conv_kernels
from tuneavideo_ms.runtime import cpu_kernels, transpose
from tuneavideo_ms.runtime.kernels import Kernels
from tuneavideo_ms.models.attention import GEGLU
from tuneavideo_ms.models.normalization import GroupNorm, LayerNorm


@pytest.mark.parametrize("shape,out_channels,kernel,stride,padding", [
    ((1, 64, 8, 32, 32), 64, 3, 1, 1),  # the shape the speed target is measured on (bench/conv.py)
    ((2, 5, 3, 9, 7), 6, 3, 1, 1),      # two clips, odd sizes, odd channels
    ((1, 8, 2, 8, 10), 16, 3, 2, 1),    # downsampling
    ((2, 8, 2, 9, 9), 16, 3, 2, 0),     # downsampling after diffusers' asymmetric pad
    ((1, 8, 3, 7, 7), 8, 3, 2, 1),      # downsampling an odd size
    ((3, 8, 2, 6, 6), 4, 1, 1, 0),      # shortcut
    ((1, 4, 2, 8, 8), 8, 5, 1, 2),      # a wider kernel (conv_in_kernel)
    ((1, 16, 4, 4, 4), 32, 3, 1, 1),    # more channels out than pixels: conv2d_matmul's images side by side
    ((1, 4, 2, 128, 128), 8, 3, 1, 1),  # frames large enough for MindSpore's own convolution
    ((1, 4, 1, 129, 131), 8, 3, 2, 0),  # the same, downsampling odd sizes
])
@pytest.mark.parametrize("kernel_cell", ["clip", "frames"])
def test_matmul_conv_equals_portable(rng, shape, out_channels, kernel, stride, padding, kernel_cell):
    """The CPU convolutions against MindSpore's own, on clips [b, c, f, h, w]:
    the clip's im2col (C++) and, without a compiler, conv2d_matmul per frame."""
    x = ms.Tensor(rng.standard_normal(shape, dtype=np.float32))
    w = ms.Tensor(rng.standard_normal((out_channels, shape[1], kernel, kernel), dtype=np.float32) * 0.1)
    b = ms.Tensor(rng.standard_normal(out_channels, dtype=np.float32))
    flat = w.reshape(out_channels, -1)  # the matmul kernels' layout
    if kernel_cell == "clip":
        fast_conv = conv_kernels.ClipIm2ColConv(cpu_kernels.build_library(), kernel, stride, padding)
    else:
        fast_conv = conv_kernels.FrameConv(conv_kernels.conv2d_matmul, kernel, stride, padding)
    portable_conv = conv_kernels.FrameConv(conv_kernels.conv2d_portable, kernel, stride, padding)
    fast = fast_conv(x, flat, b).asnumpy()
    portable = portable_conv(x, w, b).asnumpy()
    assert fast.shape == portable.shape
    assert rel_err(fast, portable) < 3e-6  # fp32 sums of 576 products in another order
    # training differentiates through it: the written-out backward must agree with the portable one's
    upstream = ms.Tensor(rng.standard_normal(fast.shape, dtype=np.float32))

    def grads(conv, weight, jit):
        def loss(x, w, b):
            return (conv(x, w, b) * upstream).sum()
        fn = ms.grad(loss, (0, 1, 2))
        return [g.asnumpy() for g in (ms.jit(fn) if jit else fn)(x, weight, b)]
    portable = grads(portable_conv, w, False)
    for jit in (False, True):
        g_x, g_w, g_b = grads(fast_conv, flat, jit)
        for g_fast, g_portable in zip((g_x, g_w.reshape(w.shape), g_b), portable):
            assert rel_err(g_fast, g_portable) < 1e-5


def test_clip_convs_of_other_geometries_in_one_graph(rng):
    """MindSpore infers every aot operator of one name with the first one's
    shape function: the geometry must come from shapes, not from the cell."""
    x = ms.Tensor(rng.standard_normal((1, 4, 2, 8, 8), dtype=np.float32))
    b = ms.Tensor(np.zeros(4, np.float32))
    geometries = ((3, 1, 1), (3, 2, 1), (5, 1, 2), (3, 1, 0))
    weights = [ms.Tensor(rng.standard_normal((4, 4, k, k), dtype=np.float32)) for k, _, _ in geometries]
    convs = ms.nn.CellList([conv_kernels.ClipIm2ColConv(cpu_kernels.build_library(), *g) for g in geometries])
    flat = [w.reshape(4, -1) for w in weights]

    @ms.jit
    def all_of_them(x):
        return [conv(x, w, b) for conv, w in zip(convs, flat)]
    for got, g, w in zip(all_of_them(x), geometries, weights):
        want = conv_kernels.FrameConv(conv_kernels.conv2d_portable, *g)(x, w, b).asnumpy()
        assert got.shape == want.shape and rel_err(got.asnumpy(), want) < 3e-6


@pytest.mark.parametrize("jit", [False, True])
def test_clip_conv_in_mixed_precision(rng, jit):
    """Under Cell.to_float(fp16), which casts a custom operator's float32
    inputs too, the float32 kernel gives way to conv2d_matmul per frame."""
    x = ms.Tensor(rng.standard_normal((1, 4, 2, 6, 6), dtype=np.float32))
    w = ms.Tensor(rng.standard_normal((8, 4, 3, 3), dtype=np.float32) * 0.1)
    b = ms.Tensor(rng.standard_normal(8, dtype=np.float32))
    conv = conv_kernels.ClipIm2ColConv(cpu_kernels.build_library(), 3, 1, 1).to_float(ms.float16)
    want = conv_kernels.FrameConv(conv_kernels.conv2d_portable, 3, 1, 1)(x, w, b).asnumpy()
    for dtype in (ms.float32, ms.float16):
        run = ms.jit(conv.construct) if jit else conv
        got = run(x.astype(dtype), w.reshape(8, -1).astype(dtype), b.astype(dtype))
        assert got.dtype == ms.float16
        assert rel_err(got.asnumpy().astype(np.float32), want) < 2e-3


@pytest.mark.parametrize("heads,dim,lq,lk,block", [
    (2, 8, 16, 32, 32 * 2 * 2 * 5),   # at most 5 query rows a block: 4 blocks of 4
    (3, 5, 7, 7, 10 ** 9),           # fits one block: the portable path (the tiny model's case)
    (1, 4, 6, 9, 1),                 # a block per query row
])
@pytest.mark.parametrize("core", [attention_kernels.RecomputingBlockwiseSoftmaxAttention,
                                  attention_kernels.BlockwiseSoftmaxAttention])
def test_memory_efficient_attention_equals_portable(rng, heads, dim, lq, lk, block, core):
    q, k, v = (ms.Tensor(rng.standard_normal((2, n, heads * dim), dtype=np.float32)) for n in (lq, lk, lk))
    upstream = ms.Tensor(rng.standard_normal((2, lq, heads * dim), dtype=np.float32))
    fast = attention_kernels.MemoryEfficientAttention(block)
    fast.core = core(block)  # the second is what gradient checkpointing runs without the fused kernel
    _assert_same_values_and_grads(fast, q, k, v, heads, dim, upstream)


@pytest.fixture
def kernel_threads():
    yield cpu_kernels.set_threads
    cpu_kernels.set_threads(0)


@pytest.mark.parametrize("heads,dim,lq,lk,threads", [
    (2, 8, 16, 32, 1),    # fewer keys than one register tile of the kernel; one thread
    (3, 5, 7, 130, 5),    # two tiles and a remainder; odd head dim; more threads than (batch, head) items
    (1, 40, 9, 77, 0),    # SD 1.x's head dim, text-length keys (cross attention); every CPU
    (1, 64, 6, 600, 2),   # the backward's keys in three chunks (256, 256, 88)
])
def test_fused_cpu_attention_equals_portable(rng, monkeypatch, kernel_threads, heads, dim, lq, lk, threads):
    # these sizes would take the portable path; the kernel's edge cases are in small sizes
    monkeypatch.setattr(attention_kernels, "FUSED_MIN_KEYS", 0)
    monkeypatch.setattr(attention_kernels, "FUSED_MIN_SCORES", 0)
    kernel_threads(threads)
    q, k, v = (ms.Tensor(rng.standard_normal((2, n, heads * dim), dtype=np.float32) * 2)
               for n in (lq, lk, lk))
    upstream = ms.Tensor(rng.standard_normal((2, lq, heads * dim), dtype=np.float32))
    fused = Kernels.build("CPU").attention()
    assert fused.fused is not None, "the kernel did not build (see the log)"
    _assert_same_values_and_grads(fused, q, k, v, heads, dim, upstream)


def _assert_same_values_and_grads(attention, q, k, v, heads, dim, upstream):
    def grads(attention, jit):
        def loss(q, k, v):
            out = attention(q, k, v, heads, dim ** -0.5, False)
            return (out * upstream).sum(), out
        fn = ms.value_and_grad(loss, (0, 1, 2), has_aux=True)
        (_, out), g = (ms.jit(fn) if jit else fn)(q, k, v)
        return [out.asnumpy()] + [x.asnumpy() for x in g]
    expected = grads(attention_kernels.attention_portable, False)
    for jit in (False, True):
        for got, want in zip(grads(attention, jit), expected):
            assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("shape,dtype", [
    # rows copied whole
    ((2, 37, 45, 3), np.float32), ((1, 5, 2, 70), np.float32), ((2, 37, 45, 3), np.float16),
    # single elements
    ((3, 64, 130, 1), np.float32), ((2, 70, 33, 1), np.float32), ((2, 37, 45, 1), np.float16),
    ((1, 1100, 1000, 1), np.float32),  # over 4 MB: on threads
])
def test_swap_axes_kernel_equals_transpose(rng, shape, dtype):
    assert transpose.fast_transpose(), "the kernel did not build (see the log)"
    x = ms.Tensor(rng.standard_normal(shape).astype(dtype))
    upstream = rng.standard_normal((shape[0], shape[2], shape[1], shape[3])).astype(dtype)
    expected = x.asnumpy().transpose(0, 2, 1, 3)

    def loss(x):
        out = runtime.swap_axes_1_2(x)
        return (out * ms.Tensor(upstream)).sum(), out
    for fn in (ms.value_and_grad(loss, has_aux=True), ms.jit(ms.value_and_grad(loss, has_aux=True))):
        (_, out), grad = fn(x)
        # a copy: exactly equal
        assert np.array_equal(out.asnumpy(), expected)
        assert np.array_equal(grad.asnumpy(), upstream.transpose(0, 2, 1, 3))


@pytest.mark.parametrize("shape,groups", [
    ((2, 8, 3, 5, 5), 4),   # a video GroupNorm: statistics over frames and pixels
    ((3, 6, 7, 7), 3),      # per-frame GroupNorm, odd sizes
    ((2, 5, 37), None),     # LayerNorm over 37 channels (not a multiple of the vector width)
    # 64 channels at 1x1, then a LayerNorm over 64: MindSpore reuses an aot
    # operator's output shapes for inputs of the same shapes, so the kernel's
    # input shapes must tell the two apart
    ((6, 64, 1, 1), 8),
    ((6, 1, 64), None),
])
def test_group_norm_kernel_equals_portable(rng, shape, groups):
    channels = shape[1] if groups else shape[-1]
    norm = GroupNorm(groups, channels, eps=1e-6) if groups else LayerNorm(channels)
    norm.weight.set_data(ms.Tensor(rng.standard_normal(channels).astype(np.float32)))
    norm.bias.set_data(ms.Tensor(rng.standard_normal(channels).astype(np.float32)))
    # an offset and scale that a one-pass variance in float32 would get wrong
    x = ms.Tensor((rng.standard_normal(shape) * 3 + 20).astype(np.float32))
    _assert_kernel_equals_portable(norm, x, rng, 2e-5)


def test_geglu_kernel_equals_portable(rng):
    geglu = GEGLU(24, 37)
    geglu.proj.weight.set_data(ms.Tensor(rng.standard_normal((74, 24)).astype(np.float32)))
    # gates with a standard deviation of about 5: both branches of the kernel's erf, and its tails
    x = ms.Tensor(rng.standard_normal((15, 24)).astype(np.float32))  # rows
    _assert_kernel_equals_portable(geglu, x, rng, 1e-5)


def _assert_kernel_equals_portable(cell, x, rng, tolerance):
    """cell's output and gradients (input, parameters) with its C++ kernel
    (PyNative and ms.jit) against its MindSpore ops."""
    assert cell.kernel is not None, "the kernel did not build (see the log)"
    upstream = ms.Tensor(rng.standard_normal(cell(x).shape).astype(np.float32))

    def loss(x):
        out = cell(x)
        return (out * upstream).sum(), out

    def run(jit):
        fn = ms.value_and_grad(loss, 0, cell.trainable_params(), has_aux=True)
        (_, out), (dx, dparams) = (ms.jit(fn) if jit else fn)(x)
        return [t.asnumpy() for t in (out, dx, *dparams)]
    got = [run(False), run(True)]
    kernel, cell.kernel = cell.kernel, None
    want = run(False)
    cell.kernel = kernel
    for values in got:
        for g, w in zip(values, want):
            assert rel_err(g, w) < tolerance


def test_kernel_switch():
    assert runtime.device() == "CPU"
    auto = runtime.kernels()
    assert auto.choice == "auto" and auto.library is not None
    assert isinstance(auto.conv(3, 1, 1), conv_kernels.ClipIm2ColConv)
    assert transpose.fast_transpose()
    attention = auto.attention()
    assert isinstance(attention, attention_kernels.MemoryEfficientAttention)
    assert isinstance(attention.fused, cpu_kernels.FusedAttention)
    assert auto.native("group_norm") is not None
    # without a compiler, the blocks of MindSpore ops, and per-frame matmul convolutions
    no_compiler = Kernels("CPU", "auto", library=None)
    assert no_compiler.attention().fused is None
    assert no_compiler.conv(3, 1, 1).conv2d is conv_kernels.conv2d_matmul
    assert no_compiler.native("geglu") is None
    portable = Kernels("CPU", "portable")
    assert portable.conv(3, 1, 1).conv2d is conv_kernels.conv2d_portable
    assert portable.attention() is attention_kernels.attention_portable
    with pytest.raises(ValueError, match="no native kernel 'softmax'"):
        auto.native("softmax")


def test_a_missing_compiler_builds_no_library(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_library", {})
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: None)
    assert Kernels.build("CPU").library is None


def test_models_need_no_setup(tmp_path):
    """A fresh process builds and runs a model without calling setup(), on the default kernels."""
    code = ("import numpy as np, mindspore as ms\n"
            "from tuneavideo_ms import runtime\n"
            "from tuneavideo_ms.models.normalization import GroupNorm\n"
            "norm = GroupNorm(2, 4)\n"
            "assert runtime.current().kernels.choice == 'auto' and norm.kernel is not None\n"
            "print(norm(ms.Tensor(np.ones((1, 4, 2, 2), np.float32))).shape)\n")
    env = dict(os.environ, TUNEAVIDEO_DEVICE="CPU")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 4, 2, 2)"


def test_portable_kernels_transpose_with_mindspore(portable_kernels):
    assert not transpose.fast_transpose()
    x = ms.Tensor(np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4))
    assert np.array_equal(runtime.swap_axes_1_2(x).asnumpy(), x.asnumpy().transpose(0, 2, 1, 3))


def test_a_failed_kernel_build_falls_back_and_leaves_no_file(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++")
    monkeypatch.setattr(cpu_kernels, "SOURCES", [str(broken)])
    monkeypatch.setattr(cpu_kernels, "_library", {})
    assert cpu_kernels.build_library(str(tmp_path / "cache")) is None
    assert "g++ failed on" in caplog.text and "broken.cc" in caplog.text
    assert os.listdir(tmp_path / "cache") == []


def test_setup_rejects_unknown_values(monkeypatch):
    with pytest.raises(ValueError, match="unknown device 'TPU'"):
        runtime.setup("TPU")
    with pytest.raises(ValueError, match="mode must be"):
        runtime.setup("CPU", mode="eager")
    monkeypatch.setenv("TUNEAVIDEO_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        runtime.setup(mode="pynative")


def test_environment_overrides_detection(monkeypatch):
    monkeypatch.setenv("TUNEAVIDEO_DEVICE", "cpu")
    assert runtime.setup(mode="pynative") == "CPU"


def test_bf16_on_cpu_is_refused_clearly():
    with pytest.raises(ValueError, match="bf16 needs an Ascend device"):
        runtime.check_dtype(ms.bfloat16)
    runtime.check_dtype(ms.float16)


def _numpy_flash(query, key, value, head_num, scalar_value=1.0, input_layout="BSH"):
    """A stand-in for ops.flash_attention_score (BSH layout) that holds the wrapper
    to the kernel's constraints: half-precision inputs, head dims a multiple of 16, at most 512."""
    assert input_layout == "BSH" and query.dtype == key.dtype == value.dtype == ms.float16
    q, k, v = (x.asnumpy().astype(np.float64) for x in (query, key, value))
    b, lq, inner = q.shape
    d = inner // head_num
    assert d % 16 == 0 and d <= 512, d
    split = lambda x: x.reshape(b, x.shape[1], head_num, d).transpose(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) * scalar_value
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    out = (probs / probs.sum(-1, keepdims=True)) @ split(v)
    return ms.Tensor(out.transpose(0, 2, 1, 3).reshape(b, lq, inner).astype(np.float16))


# head dims: SD 1.5's 40, SD 2's 64 (no padding) and 5; 77 keys: cross attention
@pytest.mark.parametrize("heads,dim,lk", [(8, 40, 77), (2, 64, 96), (4, 5, 64)])
def test_flash_attention_layout_equals_portable(rng, heads, dim, lk):
    q, k, v = (ms.Tensor(rng.standard_normal((2, n, heads * dim)).astype(np.float16)) for n in (6, lk, lk))
    expected = attention_kernels.attention_portable(q.astype(ms.float32), k.astype(ms.float32),
                                                    v.astype(ms.float32), heads, dim ** -0.5, True).asnumpy()
    out = attention_kernels.flash_attention(_numpy_flash)(q, k, v, heads, dim ** -0.5, True)
    assert out.dtype == ms.float16 and rel_err(out.asnumpy(), expected) < 2e-3
    # and it compiles in graph mode with the portable kernel plugged in
    portable = lambda q, k, v, n, scalar_value, input_layout: attention_kernels.attention_portable(  # noqa: E731
        q, k, v, n, scalar_value, True)
    jitted = ms.jit(attention_kernels.flash_attention(portable))(q, k, v, heads, dim ** -0.5, True).asnumpy()
    assert rel_err(jitted, expected) < 2e-3


def test_each_job_runs_on_the_card_its_launcher_gives(monkeypatch):
    """launch_edit.sh runs one job per card with DEVICE_ID; msrun sets its workers' cards itself."""
    monkeypatch.delenv("MS_ROLE", raising=False)
    monkeypatch.setenv("DEVICE_ID", "3")
    assert runtime.device_id("Ascend") == 3 and runtime.device_id("GPU") == 3
    assert runtime.device_id("CPU") is None
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    assert runtime.device_id("Ascend") is None
    monkeypatch.delenv("MS_ROLE")
    monkeypatch.delenv("DEVICE_ID")
    assert runtime.device_id("Ascend") is None
    monkeypatch.setenv("DEVICE_ID", "card1")
    with pytest.raises(ValueError, match="DEVICE_ID must be a card number"):
        runtime.device_id("Ascend")


def test_selfcheck_agrees_on_this_device(capsys):
    from tuneavideo_ms import selfcheck
    assert selfcheck.main(["--quick", "--device", "CPU"]) == 0
    out = capsys.readouterr().out
    for check in ("attention (spatial)", "convolution 3x3", "GroupNorm", "LayerNorm", "GEGLU", "AdamW",
                  "training step (tiny model)"):
        assert f"| {check} |" in out
    assert "DIFFERS" not in out and "checks agree" in out


def test_selfcheck_reports_a_kernel_that_disagrees(monkeypatch, capsys):
    from tuneavideo_ms import selfcheck
    portable_attention = Kernels.attention

    def off_by_a_percent(self):
        if self.choice == "portable":
            return portable_attention(self)
        return lambda q, k, v, heads, scale, upcast, mask=None: attention_kernels.attention_portable(
            q, k, v, heads, scale * 1.01, upcast, mask)
    monkeypatch.setattr(Kernels, "attention", off_by_a_percent)
    monkeypatch.setattr(selfcheck, "training_checks", lambda: [])
    assert selfcheck.main(["--quick", "--device", "CPU"]) == 1
    assert "| attention (spatial) | 2x256x320, 8 heads | float32 | CPU |" in capsys.readouterr().out
