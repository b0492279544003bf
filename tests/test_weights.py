"""The weight reader, strict loading, and the errors bad files and inputs give."""
import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import rel_err
from torch_reference import SD1_CONFIG, make_unet_2d
from tuneavideo_ms.models import UNet3DConditionModel
from tuneavideo_ms.models.attention import PointwiseConv
from tuneavideo_ms.models.resnet import InflatedConv3d
from tuneavideo_ms.weights import (TensorRef, WeightsError, load_into, read_state_dict, state_dict,
                                   write_mindspore_ckpt, write_safetensors)


@pytest.fixture(scope="module")
def sd_unet(tmp_path_factory):
    """A tiny SD 1.x UNet folder in the diffusers format, .bin and .safetensors."""
    root = tmp_path_factory.mktemp("sd")
    unet = make_unet_2d(SD1_CONFIG)
    unet.save_pretrained(root / "bin", safe_serialization=False)
    unet.save_pretrained(root / "st", safe_serialization=True)
    return root, unet.state_dict()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bin_and_safetensors_read_as_torch_wrote_them(sd_unet):
    root, expected = sd_unet
    for path in (root / "bin" / "diffusion_pytorch_model.bin",
                 root / "st" / "diffusion_pytorch_model.safetensors"):
        state = read_state_dict(path)
        assert state.keys() == expected.keys()
        for name, tensor in expected.items():
            assert np.array_equal(state[name], tensor.numpy()), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sources_are_read_exactly(tmp_path, dtype):
    t = {"a.weight": torch.randn(3, 5).to(dtype), "b": torch.randn(7).to(dtype)[::2]}  # a strided view too
    torch.save(t, tmp_path / "w.bin")
    save_file({k: v.contiguous() for k, v in t.items()}, tmp_path / "w.safetensors")
    for path in ("w.bin", "w.safetensors"):
        state = read_state_dict(tmp_path / path)
        for name, tensor in t.items():
            assert np.array_equal(state[name].astype(np.float32), tensor.float().numpy()), (path, name)


def test_mindspore_checkpoint_is_read(tmp_path):
    params = [{"name": "x.weight", "data": ms.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))}]
    ms.save_checkpoint(params, str(tmp_path / "w.ckpt"))
    assert np.array_equal(read_state_dict(tmp_path / "w.ckpt")["x.weight"], np.arange(6).reshape(2, 3))


def test_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"w": torch.zeros(1), "evil": Exploit()}, tmp_path / "evil.bin")
    with pytest.raises(WeightsError, match=r"global (posix|os)\.system"):
        read_state_dict(tmp_path / "evil.bin")
    assert not marker.exists()


def test_truncated_and_corrupt_files(sd_unet, tmp_path):
    root, _ = sd_unet
    for name in ("bin/diffusion_pytorch_model.bin", "st/diffusion_pytorch_model.safetensors"):
        data = (root / name).read_bytes()
        bad = tmp_path / os.path.basename(name)
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(WeightsError, match="truncated"):
            read_state_dict(bad)
    bad = tmp_path / "header.safetensors"
    bad.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 64)
    with pytest.raises(WeightsError, match="corrupt safetensors header"):
        read_state_dict(bad)
    bad = tmp_path / "w.ckpt"
    bad.write_bytes(b"\x01\x02garbage" * 10)
    with pytest.raises(WeightsError, match="corrupt or truncated MindSpore checkpoint"):
        read_state_dict(bad)
    write_mindspore_ckpt(bad, {"w": TensorRef.of(np.ones((8, 8), np.float32))})
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(WeightsError, match="corrupt or truncated MindSpore checkpoint"):
        read_state_dict(bad)
    with pytest.raises(WeightsError, match="weight file not found"):
        read_state_dict(tmp_path / "absent.bin")


def test_missing_unexpected_and_misshaped_tensors_are_named(sd_unet, tmp_path):
    root, expected = sd_unet
    state = {k: v.clone() for k, v in expected.items()}
    del state["conv_in.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["conv_out.weight"] = torch.zeros(4, 32, 1, 1)
    folder = _copy(root / "st", tmp_path / "unet")
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsError) as e:
        UNet3DConditionModel.from_pretrained_2d(str(folder))
    message = str(e.value)
    assert "1 missing: conv_in.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "conv_out.weight (4, 32, 1, 1) vs (4, 32, 3, 3)" in message
    # a tuned video UNet must carry its temporal layers
    with pytest.raises(WeightsError, match=r"missing: .*attn_temp"):
        UNet3DConditionModel.from_pretrained(str(root / "st"))


def test_convolution_weights_have_checkpoint_shapes_in_either_layout(rng, request):
    """The CPU convolution keeps its weight [out, in * k * k] (in a training
    graph the reshape of a 4-D Parameter is a copy kept until the backward);
    checkpoints hold [out, in, k, k] either way and move between the layouts."""
    fast = InflatedConv3d(4, 6, 3, padding=1)
    request.getfixturevalue("portable_kernels")
    portable = InflatedConv3d(4, 6, 3, padding=1)
    assert fast.weight.shape == (6, 36) and portable.weight.shape == (6, 4, 3, 3)
    assert state_dict(fast)["weight"].shape == (6, 4, 3, 3)
    x = ms.Tensor(rng.standard_normal((1, 4, 2, 5, 5)).astype(np.float32))
    load_into(portable, state_dict(fast))
    assert rel_err(portable(x).asnumpy(), fast(x).asnumpy()) < 1e-6
    load_into(fast, {"weight": np.ones((6, 4, 3, 3), np.float32), "bias": np.zeros(6, np.float32)})
    load_into(portable, state_dict(fast))
    assert rel_err(portable(x).asnumpy(), fast(x).asnumpy()) < 1e-6
    assert state_dict(PointwiseConv(4, 6))["weight"].shape == (6, 4, 1, 1)


def test_missing_config_or_weights(sd_unet, tmp_path):
    root, _ = sd_unet
    folder = _copy(root / "st", tmp_path / "a")
    os.remove(folder / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        UNet3DConditionModel.from_pretrained_2d(str(folder))
    folder = _copy(root / "st", tmp_path / "b")
    os.remove(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsError, match="no weight file in"):
        UNet3DConditionModel.from_pretrained_2d(str(folder))
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        UNet3DConditionModel.from_pretrained_2d(str(tmp_path), subfolder="unet")


def test_unsupported_config_is_named(sd_unet, tmp_path):
    root, _ = sd_unet
    folder = _copy(root / "st", tmp_path / "c")
    config = json.loads((folder / "config.json").read_text())
    config["addition_embed_type"] = "text_time"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="addition_embed_type='text_time'"):
        UNet3DConditionModel.from_pretrained_2d(str(folder))


def test_bad_inputs_are_explained():
    unet = UNet3DConditionModel(**SD1_CONFIG)
    context = ms.Tensor(np.zeros((1, 7, 32), np.float32))
    with pytest.raises(ValueError, match="must be 5-D"):
        unet(ms.Tensor(np.zeros((1, 4, 8, 8), np.float32)), 1, context)
    with pytest.raises(ValueError, match="has 3 channels; this UNet takes 4"):
        unet(ms.Tensor(np.zeros((1, 3, 2, 8, 8), np.float32)), 1, context)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \[batch, tokens, 32\]"):
        unet(ms.Tensor(np.zeros((1, 4, 2, 8, 8), np.float32)), 1, ms.Tensor(np.zeros((1, 7, 64), np.float32)))


def test_streaming_writers_match_mindspore_and_torch(tmp_path):
    rng = np.random.default_rng(0)
    state = {"w": rng.standard_normal((3, 5, 2, 2)).astype(np.float32), "scalar": np.array(2.5, np.float32),
             "half": rng.standard_normal(7).astype(np.float16), "step": np.arange(3, dtype=np.int64)}
    refs = {k: TensorRef.of(v) for k, v in state.items()}
    # byte for byte what mindspore.save_checkpoint writes, and read back exactly
    write_mindspore_ckpt(tmp_path / "ours.ckpt", refs)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in state.items()],
                       str(tmp_path / "ms.ckpt"))
    assert (tmp_path / "ours.ckpt").read_bytes() == (tmp_path / "ms.ckpt").read_bytes()
    back = read_state_dict(tmp_path / "ours.ckpt")
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())
    # bf16 rounds as torch rounds, in both formats; integers keep their type
    write_safetensors(tmp_path / "b.safetensors", refs, dtype="BF16")
    write_mindspore_ckpt(tmp_path / "b.ckpt", refs, dtype="BF16")
    expected = torch.from_numpy(state["w"]).bfloat16()
    from safetensors.torch import load_file
    loaded = load_file(tmp_path / "b.safetensors")
    assert torch.equal(loaded["w"], expected) and loaded["step"].dtype == torch.int64
    assert ms.load_checkpoint(str(tmp_path / "b.ckpt"))["w"].dtype == ms.bfloat16
    assert np.array_equal(read_state_dict(tmp_path / "b.ckpt")["w"], expected.float().numpy())


def _patched_bin(tmp_path, name, tensor, patches):
    """torch.save({"w": tensor}) with integers of its pickle replaced: `patches` maps
    (opcode name, value, occurrence) to the new value (same width)."""
    import io
    import pickletools
    import zipfile
    torch.save({"w": tensor}, tmp_path / "clean.bin")
    with zipfile.ZipFile(tmp_path / "clean.bin") as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for filename, body in entries:
            if filename.endswith("data.pkl"):
                body, seen = bytearray(body), {}
                widths = {"BININT": 4, "BININT1": 1, "BININT2": 2}
                for op, arg, pos in pickletools.genops(bytes(body)):
                    if op.name in widths:
                        seen[(op.name, arg)] = seen.get((op.name, arg), 0) + 1
                        new = patches.get((op.name, arg, seen[(op.name, arg)]))
                        if new is not None:
                            body[pos + 1:pos + 1 + widths[op.name]] = new.to_bytes(widths[op.name], "little")
                body = bytes(body)
            zf.writestr(filename, body)
    (tmp_path / name).write_bytes(out.getvalue())
    return tmp_path / name


def test_tensor_metadata_is_checked_against_its_storage_and_file(tmp_path):
    """A tensor claiming more than its storage holds (once a crash or a copy of process memory),
    a stride-0 tensor claiming gigabytes, and a safetensors entry whose bytes do not fit its shape."""
    n = 70000  # pickled as a 4-byte int: (pid numel, size) in that order
    overrun = _patched_bin(tmp_path, "overrun.bin", torch.zeros(n), {("BININT", n, 2): n + 1})
    with pytest.raises(WeightsError, match=r"reads past its storage of 70000 elements"):
        read_state_dict(overrun)
    huge = _patched_bin(tmp_path, "huge.bin", torch.zeros(n),
                        {("BININT", n, 2): 2 ** 31 - 1, ("BININT1", 1, 1): 0})
    with pytest.raises(WeightsError, match="more than the file holds"):
        read_state_dict(huge)
    assert np.array_equal(read_state_dict(_patched_bin(tmp_path, "same.bin", torch.ones(n), {}))["w"],
                          np.ones(n))
    write_safetensors(tmp_path / "w.safetensors", {"w": TensorRef.of(np.ones((4, 4), np.float32))})
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data.replace(b'"shape":[4,4]', b'"shape":[4,3]'))
    with pytest.raises(WeightsError, match=r"has 64 bytes for F32 of shape \(4, 3\) \(48 needed\)"):
        read_state_dict(tmp_path / "short.safetensors")
