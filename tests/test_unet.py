"""The video UNet against diffusers (static clips) and against a PyTorch
video oracle (moving clips, non-zero temporal weights)."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from conftest import rel_err
from torch_reference import (SD1_CONFIG, SD2_CONFIG, VideoUNetOracle, assert_matches_torch, make_unet_2d,
                             run_float64)
from tuneavideo_ms.runtime import attention
from tuneavideo_ms.models import UNet3DConditionModel
from tuneavideo_ms.weights import read_state_dict


def _inputs(rng, config, frames, static, batch=1, size=(16, 16)):
    # latents of 16x16 or more: at the tiny UNet's 2x2 bottom each GroupNorm group then pools enough values
    # that rounding (which differs by CPU) is not amplified into the output
    shape = (batch, 4, 1 if static else frames) + size
    sample = rng.standard_normal(shape, dtype=np.float32)
    if static:
        sample = np.repeat(sample, frames, axis=2)
    width = config["cross_attention_dim"]
    return sample, rng.standard_normal((batch, 7, width), dtype=np.float32)


def _static_clip_matches_2d(tmp_path, rng, config, safe_serialization):
    ref = make_unet_2d(config)
    ref.save_pretrained(tmp_path / "unet", safe_serialization=safe_serialization)
    unet = UNet3DConditionModel.from_pretrained_2d(str(tmp_path), subfolder="unet")
    for block in (unet.down_blocks[0].attentions[0].transformer_blocks[0], unet.mid_block.attentions[0]
                  .transformer_blocks[0]):
        assert not block.attn_temp.to_out[0].weight.asnumpy().any()
        assert not block.attn_temp.to_out[0].bias.asnumpy().any()
    sample, context = _inputs(rng, config, frames=3, static=True, batch=2)
    out = unet(ms.Tensor(sample), 17, ms.Tensor(context)).asnumpy()
    for i in range(3):
        assert_matches_torch(out[:, :, i], ref, sample[:, :, 0], 17, context)


def test_inflated_sd1_equals_2d_unet_on_static_clip(tmp_path, rng):
    _static_clip_matches_2d(tmp_path, rng, SD1_CONFIG, safe_serialization=False)


def test_inflated_sd2_equals_2d_unet_on_static_clip(tmp_path, rng):
    # linear projections, per-block head counts, 1024-wide context, upcast attention
    _static_clip_matches_2d(tmp_path, rng, SD2_CONFIG, safe_serialization=True)


def test_config_fields_equal_diffusers(tmp_path, rng):
    """Less common fields, and a config with no mid_block_type (which the original cannot load)."""
    config = dict(SD1_CONFIG, class_embed_type="timestep", resnet_time_scale_shift="scale_shift",
                  center_input_sample=True, flip_sin_to_cos=False, freq_shift=1, only_cross_attention=True,
                  downsample_padding=0, mid_block_scale_factor=1.5, norm_eps=1e-6)
    ref = make_unet_2d(config)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    saved.pop("mid_block_type")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    unet = UNet3DConditionModel.from_pretrained_2d(str(tmp_path))
    sample, context = _inputs(rng, config, frames=2, static=True)
    labels = np.array([5.0], np.float32)
    out = unet(ms.Tensor(sample), 3, ms.Tensor(context), class_labels=ms.Tensor(labels)).asnumpy()
    for i in range(2):
        assert_matches_torch(out[:, :, i], ref, sample[:, :, 0], 3, context, class_labels=labels)


@pytest.mark.parametrize("config,fused_everywhere,size", [
    (SD1_CONFIG, False, (16, 16)), (SD2_CONFIG, True, (16, 16)),
    (SD1_CONFIG, False, (9, 11)), (SD2_CONFIG, False, (15, 15))],
    ids=["sd1", "sd2-fused-cpu-attention", "sd1-9x11", "sd2-15x15"])
def test_tuned_video_unet_equals_torch_oracle(tmp_path, rng, monkeypatch, config, fused_everywhere, size):
    """A tuned UNet as the PyTorch Tune-A-Video saves it (3D config, .bin),
    non-zero temporal weights, a moving clip: equal to the PyTorch oracle.
    The second runs every attention on the fused CPU kernel, which the tiny
    sizes would otherwise leave to the portable one. Latents of 9x11 and
    15x15 (72x88 and 120x120 pixels) are not divisible by the UNet's
    downsampling: its upsamplers meet the skip connections' sizes."""
    if fused_everywhere:
        monkeypatch.setattr(attention, "FUSED_MIN_KEYS", 0)
        monkeypatch.setattr(attention, "FUSED_MIN_SCORES", 0)
    frames = 3
    oracle = VideoUNetOracle(make_unet_2d(config, seed=1), frames).eval()
    oracle.save_original_format(tmp_path / "unet")
    unet = UNet3DConditionModel.from_pretrained(str(tmp_path / "unet"))
    sample, context = _inputs(rng, config, frames, static=False, batch=2, size=size)
    out = unet(ms.Tensor(sample), 500, ms.Tensor(context)).asnumpy()
    assert out.shape == sample.shape
    expected = assert_matches_torch(out, oracle, sample, 500, context)
    # the test can fail: the same model on another clip (frame 0 kept) differs by far more
    other = sample.copy()
    other[:, :, 1:] = sample[:, :, :1]
    assert rel_err(run_float64(oracle, other, 500, context)[:, :, 1:], expected[:, :, 1:]) > 1e-2


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    unet = UNet3DConditionModel(**SD1_CONFIG)
    unet.save_pretrained(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert not [p for p in os.listdir(tmp_path) if p != "out"], "temporary files left behind"
    loaded = UNet3DConditionModel.from_pretrained(str(tmp_path / "out"))
    assert loaded.config == unet.config
    before = {n: p.asnumpy() for n, p in unet.parameters_and_names()}
    after = {n: p.asnumpy() for n, p in loaded.parameters_and_names()}
    assert before.keys() == after.keys()
    for name in before:
        assert np.array_equal(before[name], after[name]), name
    # the file carries the diffusers names, readable without this project
    names = set(read_state_dict(str(tmp_path / "out" / "diffusion_pytorch_model.safetensors")))
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight" in names
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_out.0.bias" in names
    assert "mid_block.resnets.0.norm1.weight" in names
    # saving again over an existing folder replaces it
    unet.save_pretrained(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_graph_mode_equals_pynative(rng):
    unet = UNet3DConditionModel(**SD1_CONFIG)
    sample, context = _inputs(rng, SD1_CONFIG, frames=3, static=False)
    eager = unet(ms.Tensor(sample), 10, ms.Tensor(context)).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = unet(ms.Tensor(sample), 10, ms.Tensor(context)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert rel_err(graph, eager) < 1e-5
