"""Single-file LDM checkpoints: tiny diffusers models written in the original
Stable Diffusion layout by the inverse of the published LDM -> diffusers
mapping (written here, separately from weights_convert/ldm.py), converted
back by weights_convert, must give the same tensors and configs."""
import json
import os
import re

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from tuneavideo_ms import tiny
from tuneavideo_ms.weights import read_state_dict
from weights_convert import convert

UNET_SD1 = dict(sample_size=8, block_out_channels=(32, 32, 64), layers_per_block=2, cross_attention_dim=768,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                attention_head_dim=8)
UNET_SD2 = dict(sample_size=8, block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=1024,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=[1, 2],
                use_linear_projection=True)
VAE = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _perturbed(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return module


def _layer(kind, rest):
    """An LDM block holds [resnet, attention, ...]: index 0 or 1, and the resnet's own names."""
    return f"0.{'.'.join(RESNET.get(p, p) for p in rest.split('.'))}" if kind == "resnets" else f"1.{rest}"


def unet_to_ldm(state, config):
    per = config["layers_per_block"] + 1
    attention_up = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for name, value in state.items():
        head, _, param = name.rpartition(".")
        if head in top:
            ldm = f"{top[head]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
            ldm = f"input_blocks.{1 + int(m[1]) * per + int(m[3])}.{_layer(m[2], m[4])}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
            ldm = f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", name):
            ldm = f"middle_block.{2 * int(m[1])}." + ".".join(RESNET.get(p, p) for p in m[2].split("."))
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
            ldm = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
            ldm = f"output_blocks.{int(m[1]) * per + int(m[3])}.{_layer(m[2], m[4])}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
            b = int(m[1])
            ldm = f"output_blocks.{b * per + per - 1}.{2 if attention_up[b] else 1}.conv.{m[2]}"
        else:
            raise AssertionError(name)
        out["model.diffusion_model." + ldm] = value
    return out


def vae_to_ldm(state, levels):
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for name, value in state.items():
        ldm = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", ldm):
            ldm = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", ldm):
            ldm = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", ldm):
            ldm = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", ldm):
            ldm = f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.fullmatch(r"(\w+)\.mid_block\.resnets\.(\d)\.(.+)", ldm):
            ldm = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(\w+)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", ldm):
            ldm = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # LDM's 1x1 convolutions
        out["first_stage_model." + ldm] = value
    return out


def open_clip_to_ldm(state, width):
    """transformers CLIP names -> OpenCLIP's, plus the last block SD 2.x skips and the projection."""
    out = {"positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           "ln_final.weight": state["text_model.final_layer_norm.weight"],
           "ln_final.bias": state["text_model.final_layer_norm.bias"],
           "text_projection": torch.randn(width, width), "logit_scale": torch.tensor(4.6)}
    layers = 1 + max(int(n.split(".")[3]) for n in state if ".layers." in n)
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(layers + 1):
        src = f"text_model.encoder.layers.{min(i, layers - 1)}."
        for param in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{param}"] = torch.cat(
                [state[f"{src}self_attn.{p}.{param}"] for p in ("q_proj", "k_proj", "v_proj")]) + i // layers
            for new, old in names.items():
                out[f"transformer.resblocks.{i}.{old}.{param}"] = state[f"{src}{new}.{param}"] + i // layers
    return {"cond_stage_model.model." + k: v for k, v in out.items()}


def _models(sd2):
    unet = _perturbed(UNet2DConditionModel(**(UNET_SD2 if sd2 else UNET_SD1))).eval()
    vae = _perturbed(AutoencoderKL(**VAE))
    width = 1024 if sd2 else 768
    text = CLIPTextModel(CLIPTextConfig(vocab_size=tiny.VOCAB_SIZE, hidden_size=width, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=width // 64,
                                        hidden_act="gelu" if sd2 else "quick_gelu"))
    return unet, vae, _perturbed(text)


def _ldm_file(path, sd2):
    unet, vae, text = _models(sd2)
    ldm = unet_to_ldm(unet.state_dict(), unet.config)
    ldm.update(vae_to_ldm(vae.state_dict(), len(VAE["block_out_channels"])))
    if sd2:
        ldm.update(open_clip_to_ldm(text.state_dict(), 1024))
    else:
        ldm.update({"cond_stage_model.transformer." + k: v for k, v in text.state_dict().items()})
        ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ldm["model_ema.decay"] = torch.tensor(0.9999)  # training state the converter leaves out
    ldm = {k: v.contiguous() for k, v in ldm.items()}
    if path.endswith(".safetensors"):
        save_file(ldm, path)
    else:  # the original files are Lightning checkpoints, with numpy scalars beside the weights
        torch.save({"state_dict": ldm, "global_step": np.int64(470000), "epoch": 6}, path)
    return unet, vae, text


def _same(state, path):
    converted = read_state_dict(path)
    expected = {k: v.numpy() for k, v in state.items() if not k.endswith("position_ids")}
    assert sorted(converted) == sorted(expected)
    for k, v in expected.items():
        assert np.array_equal(converted[k], v), k


@pytest.mark.parametrize("sd2,suffix", [(False, ".ckpt"), (True, ".safetensors")])
def test_single_file_ldm_converts_to_the_same_tensors(tmp_path, sd2, suffix):
    unet, vae, text = _ldm_file(str(tmp_path / ("sd" + suffix)), sd2)
    tiny.write_tokenizer(str(tmp_path / "tok"))
    to = "diffusers" if sd2 else "mindspore"
    ext = ".safetensors" if sd2 else ".ckpt"
    summary = convert(str(tmp_path / ("sd" + suffix)), str(tmp_path / "out"), to=to,
                      prediction_type="v_prediction" if sd2 else "epsilon", tokenizer=str(tmp_path / "tok"))
    assert summary["kind"] == "ldm"
    out = tmp_path / "out"
    _same(unet.state_dict(), out / "unet" / ("diffusion_pytorch_model" + ext))
    _same(vae.state_dict(), out / "vae" / ("diffusion_pytorch_model" + ext))
    _same(text.state_dict(), out / "text_encoder" / ("model" + ext))
    from tuneavideo_ms.models.modeling import read_config
    config = read_config(str(out / "unet"))
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                "cross_attention_dim", "attention_head_dim", "use_linear_projection"):
        assert config[key] == (list(unet.config[key]) if isinstance(unet.config[key], tuple) else
                               unet.config[key]), key
    assert read_config(str(out / "vae"))["block_out_channels"] == list(VAE["block_out_channels"])
    text_config = read_config(str(out / "text_encoder"))
    assert (text_config["num_hidden_layers"], text_config["hidden_act"]) == (2, text.config.hidden_act)
    if sd2:
        # PyTorch diffusers loads what --to diffusers wrote, and computes what the source computes
        loaded = UNet2DConditionModel.from_pretrained(str(out / "unet")).eval()
        x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 3, 1024)
        with torch.no_grad():  # the tensors are identical; torch's CPU kernels vary in the last bits
            torch.testing.assert_close(loaded(x, 10, c).sample, unet(x, 10, c).sample, rtol=1e-5, atol=1e-5)
        with open(out / "scheduler" / "scheduler_config.json") as f:
            assert json.load(f)["prediction_type"] == "v_prediction"
    else:
        from tuneavideo_ms.pipelines import TuneAVideoPipeline
        pipe = TuneAVideoPipeline.from_pretrained(str(out))
        assert pipe.unet.config.cross_attention_dim == 768


def test_bad_single_files_are_named_and_leave_nothing(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a Stable Diffusion LDM checkpoint .*found w"):
        convert(str(tmp_path / "other.safetensors"), str(tmp_path / "out"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a checkpoint"):
        convert(str(tmp_path / "notes.txt"), str(tmp_path / "out"))
    _ldm_file(str(tmp_path / "sd.ckpt"), sd2=False)
    data = (tmp_path / "sd.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="nothing written .*corrupt or truncated PyTorch file"):
        convert(str(tmp_path / "cut.ckpt"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out")]
