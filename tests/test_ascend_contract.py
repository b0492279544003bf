"""The Ascend path held to MindSpore's documented contracts, on CPU: the tiny UNet and VAE built with
Ascend's kernels (a 910B, FlashAttention recorded instead of run), every call into the Ascend-only
operators checked against the operator's real signature and documented limits."""
import inspect
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops
from mindspore.ops import constexpr

from conftest import REPO, rel_err
from tuneavideo_ms import runtime, tiny
from tuneavideo_ms.models import UNet3DConditionModel
from tuneavideo_ms.models.vae import AutoencoderKL
from tuneavideo_ms.runtime.attention import attention_portable, flash_attention
from tuneavideo_ms.runtime.kernels import Kernels

FLASH = inspect.signature(ops.flash_attention_score)
CALLS = []


@constexpr
def _record(q, k, v, head_num, scalar_value, input_layout):
    # runs while the graph compiles (and in PyNative at each call), with shapes and dtypes as constants
    CALLS.append(FLASH.bind(q, k, v, head_num, scalar_value=scalar_value, input_layout=input_layout))
    return 1


def recording_flash(query, key, value, head_num, scalar_value=1.0, input_layout="BSH"):
    """Stands in for ops.flash_attention_score: records its arguments, computes the portable attention."""
    one = _record((query.shape, query.dtype), (key.shape, key.dtype), (value.shape, value.dtype), head_num,
                  scalar_value, input_layout)
    return attention_portable(query, key, value, head_num, scalar_value, True) * one


def check_flash_calls(calls):
    assert calls, "no attention reached FlashAttention"
    for call in calls:
        q_shape, q_dtype = call.arguments["query"]
        k_shape, k_dtype = call.arguments["key"]
        v_shape, v_dtype = call.arguments["value"]
        heads, layout = call.arguments["head_num"], call.arguments["input_layout"]
        assert q_dtype == k_dtype == v_dtype and q_dtype in (ms.float16, ms.bfloat16), call
        assert layout == "BSH" and len(q_shape) == len(k_shape) == 3 and k_shape == v_shape, call
        assert q_shape[0] == k_shape[0] <= 2048, call  # the batch limit of some CANN versions
        assert 1 <= heads <= 256 and q_shape[2] % heads == 0, call
        d = q_shape[2] // heads
        assert d % 16 == 0 and d <= 512, call
        assert k_shape[1] >= 64, call  # short rows of keys stay on MindSpore's ops
        assert isinstance(call.arguments["scalar_value"], float), call


@pytest.fixture
def ascend():
    CALLS.clear()
    return Kernels("Ascend", "auto", chip="Ascend910B", flash=recording_flash)


def _no_unequal_layer_norm(model):
    for name, cell in model.cells_and_names():
        for attr in vars(cell).values():
            if isinstance(attr, ops.LayerNorm):
                assert attr.begin_norm_axis == attr.begin_params_axis, name


class Loss(nn.Cell):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def construct(self, sample, t, context):
        return self.unet(sample, t, context).astype(ms.float32).square().mean()


def test_the_unet_meets_flash_attentions_contract_in_a_compiled_gradient(ascend, rng):
    with runtime.using(ascend):
        # 2 heads of 32 and 64 channels: head dims 16 and 32
        unet = UNet3DConditionModel(**dict(tiny.UNET_CONFIG, attention_head_dim=2))
    _no_unequal_layer_norm(unet)
    unet.to_float(ms.float16)
    sample = ms.Tensor(rng.standard_normal((1, 4, 2, 16, 16)).astype(np.float32))  # 256 and 64 tokens
    context = ms.Tensor(rng.standard_normal((1, 77, 32)).astype(np.float32))  # 77 keys
    params = [p for p in unet.trainable_params() if "attn1.to_q" in p.name]
    step = ms.jit(ms.value_and_grad(Loss(unet), None, params))
    loss, grads = step(sample, ms.Tensor([10.0]), context)
    assert np.isfinite(float(loss.asnumpy())) and all(np.isfinite(g.asnumpy()).all() for g in grads)
    check_flash_calls(CALLS)
    # sparse-causal attention (two frames of 256 and of 64 tokens: 512 and 128 keys) and cross attention
    # (77 keys) reached the kernel; temporal attention (2 keys) did not
    assert {call.arguments["key"][0][1] for call in CALLS} == {512, 128, 77}


def test_the_vae_has_no_layer_norm_ascend_refuses(ascend):
    with runtime.using(ascend):
        vae = AutoencoderKL(**tiny.VAE_CONFIG)
    _no_unequal_layer_norm(vae)


def test_ascends_group_norm_statistics_equal_the_cpu_ones(ascend, rng):
    from tuneavideo_ms.models.normalization import GroupNorm
    x = ms.Tensor(rng.standard_normal((2, 8, 3, 5, 5)).astype(np.float32) * 3 + 1)
    with runtime.using(Kernels("CPU", "portable")):
        cpu = GroupNorm(4, 8)
    with runtime.using(ascend):
        npu = GroupNorm(4, 8)
    assert rel_err(npu(x).asnumpy(), cpu(x).asnumpy()) < 1e-5


def test_fp32_attention_never_runs_in_fp16(ascend, rng):
    """Without mixed precision no loss scale lifts the gradients: cast to fp16 for the kernel, a small
    upstream gradient (SD's MSE loss gives about 1e-5) underflows. fp32 stays fp32, equal to portable."""
    attention = ascend.attention()
    q, k, v = (ms.Tensor(rng.standard_normal((2, n, 64)).astype(np.float32)) for n in (96, 96, 96))
    upstream = ms.Tensor(rng.standard_normal((2, 96, 64)).astype(np.float32) * 1e-6)

    def grads(fn):
        return ms.grad(lambda q, k, v: (fn(q, k, v, 4, 0.25, True) * upstream).sum(), (0, 1, 2))(q, k, v)
    for got, want in zip(grads(attention), grads(attention_portable)):
        assert rel_err(got.asnumpy(), want.asnumpy()) < 1e-6
    assert not CALLS


def test_only_chips_that_run_flash_attention_get_it():
    for chip, flash in (("Ascend910B3", True), ("Ascend910_9391", True), ("Ascend910A", False),
                        ("Ascend310P3", False)):
        assert Kernels("Ascend", "auto", chip=chip).flash_attention_runs() == flash, chip
    assert not Kernels("Ascend", "portable", chip="Ascend910B").flash_attention_runs()
    assert Kernels("Ascend", "auto", chip="Ascend910A").attention() is attention_portable


@pytest.mark.parametrize("shape,flash", [
    ((2, 96, 64), True),      # spatial attention: the kernel
    ((4096, 8, 64), False),   # temporal attention: 8 keys, a batch of every pixel
    ((2100, 96, 64), False),  # over the batch limit
])
def test_short_keys_and_large_batches_stay_portable(ascend, rng, shape, flash):
    q = ms.Tensor(rng.standard_normal(shape).astype(np.float16))
    flash_attention(recording_flash)(q, q, q, 4, 0.25, True)
    assert bool(CALLS) == flash


def test_each_launch_edit_slot_has_its_own_card_and_compile_cache(tmp_path):
    """tools/launch_edit.sh with a stand-in interpreter that prints what each job was given."""
    stub = tmp_path / "python"
    stub.write_text(f"""#!/bin/sh
if [ "$1" = "-" ]; then exec {sys.executable} "$@"; fi
echo "DEVICE_ID=$DEVICE_ID TUNEAVIDEO_COMPILE_CACHE=$TUNEAVIDEO_COMPILE_CACHE"
""")
    stub.chmod(0o755)
    configs = []
    for i in range(4):
        config = tmp_path / f"clip{i}.yaml"
        config.write_text(f"output_dir: {tmp_path / f'out{i}'}\n")
        configs.append(str(config))
    env = dict(os.environ, PYTHON=str(stub), TUNEAVIDEO_COMPILE_CACHE=str(tmp_path / "graphs"))
    result = subprocess.run(["bash", os.path.join(REPO, "tools", "launch_edit.sh"), "--workers", "2",
                             "--log-dir", str(tmp_path / "logs"), "--configs", *configs],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = {}
    for name in sorted(os.listdir(tmp_path / "logs")):
        if name.endswith(".log"):
            fields = dict(item.split("=", 1) for item in (tmp_path / "logs" / name).read_text().split())
            seen[name] = fields
    assert len(seen) == 4
    slots = {fields["DEVICE_ID"] for fields in seen.values()}
    assert slots == {"0", "1"}
    for fields in seen.values():  # a folder per card: two jobs at once never write one graph folder
        assert fields["TUNEAVIDEO_COMPILE_CACHE"] == str(tmp_path / "graphs" / f"card-{fields['DEVICE_ID']}")
