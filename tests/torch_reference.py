"""PyTorch references built in the tests from diffusers (test-only).

`VideoUNetOracle` is a diffusers UNet2DConditionModel run over the frames with
Tune-A-Video's changes patched in: sparse-causal attn1 (frame i attends to
frames 0 and i-1, gathered by index as the original does), temporal attention
after each transformer block, and GroupNorm statistics pooled over frames in
the resnets and the output norm. Its state dict carries the 3D names.
"""
import copy
import json
import os
import types

import numpy as np

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from tuneavideo_ms import tiny

SD1_CONFIG = dict(tiny.UNET_CONFIG)
SD2_CONFIG = dict(tiny.UNET_CONFIG, use_linear_projection=True, attention_head_dim=[2, 4, 4, 4],
                  cross_attention_dim=1024, upcast_attention=True)


def make_unet_2d(config, seed=0):
    """A diffusers UNet with every parameter perturbed (norms included), so a
    parameter loaded under the wrong name shows in the output."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet


def _run(module, dtype, args, kwargs):
    module = copy.deepcopy(module).to(dtype)
    args = [torch.from_numpy(np.asarray(a)).to(dtype) if isinstance(a, np.ndarray) else a for a in args]
    kwargs = {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in kwargs.items()}
    with torch.no_grad():
        out = module(*args, **kwargs)
    return (out.sample if hasattr(out, "sample") else out).numpy()


def run_float64(module, *args, **kwargs):
    return _run(module, torch.float64, args, kwargs)


def assert_matches_torch(out, module, *args, **kwargs):
    """`out` equals the module's float64 output to 5e-5 relative, or, on an
    input where fp32 PyTorch itself is further off (it reaches 9e-5 on some
    tiny random UNets), to within twice PyTorch's own fp32 error. fp32
    rounding through a UNet is of that order: measured 0.6e-6 to 6.9e-5 here
    (Im2Col + MatMul convolution), PyTorch's own 6.6e-6 to 9e-5; a misplaced
    tensor or a wrong step is off by 1e-2 or more."""
    exact = run_float64(module, *args, **kwargs)
    torch_fp32 = _run(module, torch.float32, args, kwargs)
    scale = np.abs(exact).max()
    err = np.abs(out - exact).max() / scale
    tolerance = max(5e-5, 2 * np.abs(torch_fp32 - exact).max() / scale)
    assert err < tolerance, f"relative error {err:.3g} (tolerance {tolerance:.3g})"
    return exact


class SparseCausalProcessor:
    def __init__(self, video_length):
        self.f = video_length

    def _context(self, x):
        bf, n, c = x.shape
        x = x.reshape(bf // self.f, self.f, n, c)
        former = [0] + list(range(self.f - 1))
        return torch.cat([x[:, [0] * self.f], x[:, former]], dim=2).reshape(bf, 2 * n, c)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        q = attn.to_q(hidden_states)
        k = self._context(attn.to_k(hidden_states))
        v = self._context(attn.to_v(hidden_states))
        bf, n, inner = q.shape
        h = attn.heads
        q, k, v = (t.reshape(bf, -1, h, inner // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bf, n, inner)
        return attn.to_out[1](attn.to_out[0](out))


def _pooled_group_norm(gn, x):
    bf, c, h, w = x.shape
    f = gn.video_length
    y = x.reshape(bf // f, f, c, h, w).transpose(1, 2)
    y = F.group_norm(y, gn.num_groups, gn.weight, gn.bias, gn.eps)
    return y.transpose(1, 2).reshape(bf, c, h, w)


def _pool_over_frames(gn, video_length):
    gn.video_length = video_length
    gn.forward = types.MethodType(_pooled_group_norm, gn)  # a bound method survives deepcopy


def _temporal_hook(block, video_length):
    def hook(module, args, output):
        bf, d, c = output.shape
        x = output.reshape(bf // video_length, video_length, d, c).permute(0, 2, 1, 3)
        x = x.reshape(-1, video_length, c)
        x = module.attn_temp(module.norm_temp(x)) + x
        return x.reshape(bf // video_length, d, video_length, c).permute(0, 2, 1, 3).reshape(bf, d, c)
    block.register_forward_hook(hook)


class VideoUNetOracle(torch.nn.Module):
    def __init__(self, unet2d, video_length, temporal_scale=0.1):
        super().__init__()
        self.unet = unet2d
        self.f = video_length
        for name, module in unet2d.named_modules():
            if type(module).__name__ == "BasicTransformerBlock":
                dim = module.norm1.normalized_shape[0]
                heads = module.attn1.heads
                module.attn_temp = Attention(dim, heads=heads, dim_head=dim // heads,
                                             upcast_attention=module.attn1.upcast_attention)
                module.norm_temp = torch.nn.LayerNorm(dim)
                with torch.no_grad():
                    for p in list(module.attn_temp.parameters()) + list(module.norm_temp.parameters()):
                        p.add_(torch.randn_like(p) * temporal_scale)
                module.attn1.set_processor(SparseCausalProcessor(video_length))
                _temporal_hook(module, video_length)
            if type(module).__name__ == "ResnetBlock2D":
                _pool_over_frames(module.norm1, video_length)
                _pool_over_frames(module.norm2, video_length)
        _pool_over_frames(unet2d.conv_norm_out, video_length)

    def forward(self, sample, timestep, encoder_hidden_states):
        b, c, f, h, w = sample.shape
        x = sample.transpose(1, 2).reshape(b * f, c, h, w)
        context = encoder_hidden_states.repeat_interleave(f, dim=0)
        out = self.unet(x, timestep, context).sample
        return out.reshape(b, f, c, h, w).transpose(1, 2)

    def save_original_format(self, folder):
        """As the PyTorch Tune-A-Video writes a tuned UNet: 3D config, .bin weights."""
        os.makedirs(folder, exist_ok=True)
        config = dict(self.unet.config)
        config["_class_name"] = "UNet3DConditionModel"
        config["down_block_types"] = [t.replace("2D", "3D") for t in config["down_block_types"]]
        config["up_block_types"] = [t.replace("2D", "3D") for t in config["up_block_types"]]
        config["mid_block_type"] = "UNetMidBlock3DCrossAttn"
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        torch.save(self.unet.state_dict(), os.path.join(folder, "diffusion_pytorch_model.bin"))
