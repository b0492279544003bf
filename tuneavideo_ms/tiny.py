"""A tiny Stable Diffusion with the real topology (four levels, two layers per
block, every parameter name the real one) and 32-64 channels, written in the
diffusers folder layout without torch: the demo's embedded default and the
tests' model. Its weights are random, so what it generates is noise."""
import json
import os

import mindspore as ms
import numpy as np

from .atomic import atomic_dir
from .layout import model_index, write_json
from .weights import save_safetensors, state_dict

UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 32, 64, 64], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=32, attention_head_dim=4,
    norm_num_groups=32,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 32, 64, 64], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
    sample_size=64, scaling_factor=0.18215,
)
# byte-level tokens (256 bytes, each also as a word end) and the two specials
VOCAB_SIZE = 514
TEXT_ENCODER_CONFIG = dict(
    architectures=["CLIPTextModel"], model_type="clip_text_model", vocab_size=VOCAB_SIZE, hidden_size=32,
    intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32, bos_token_id=VOCAB_SIZE - 2,
    eos_token_id=VOCAB_SIZE - 1, pad_token_id=1, torch_dtype="float32",
)
# Stable Diffusion 1.5's noise schedule
SCHEDULER_CONFIG = dict(
    _class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    prediction_type="epsilon",
)


def _bytes_to_unicode():
    """CLIP's (and GPT-2's) reversible map from bytes to printable characters."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tokenizer(folder):
    """A byte-level CLIP tokenizer (vocab.json + merges.txt) that transformers'
    CLIPTokenizer reads: every word is spelt out byte by byte."""
    os.makedirs(folder, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": VOCAB_SIZE - 2, "<|endoftext|>": VOCAB_SIZE - 1})
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    config = dict(model_max_length=77, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                  unk_token="<|endoftext|>", pad_token="<|endoftext|>", do_lower_case=True,
                  tokenizer_class="CLIPTokenizer")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, f)


def _write_model(folder, config, state, weight_name):
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), config)
    save_safetensors(os.path.join(folder, weight_name), state)


def build_tiny_sd(path, seed=0, overwrite=False):
    """Writes the tiny Stable Diffusion folder at `path` (random weights from `seed`)."""
    from .models import UNet3DConditionModel
    from .models.text_encoder import CLIPTextModel
    from .models.vae import AutoencoderKL

    np.random.seed(seed)
    ms.set_seed(seed)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        unet = {k: v for k, v in state_dict(UNet3DConditionModel(**UNET_CONFIG)).items()
                if ".attn_temp." not in k and ".norm_temp." not in k}
        _write_model(os.path.join(tmp, "unet"), dict(UNET_CONFIG, _class_name="UNet2DConditionModel"), unet,
                     "diffusion_pytorch_model.safetensors")
        _write_model(os.path.join(tmp, "vae"), dict(VAE_CONFIG, _class_name="AutoencoderKL"),
                     state_dict(AutoencoderKL(**VAE_CONFIG)), "diffusion_pytorch_model.safetensors")
        _write_model(os.path.join(tmp, "text_encoder"), TEXT_ENCODER_CONFIG,
                     state_dict(CLIPTextModel(**TEXT_ENCODER_CONFIG)), "model.safetensors")
        write_tokenizer(os.path.join(tmp, "tokenizer"))
        os.makedirs(os.path.join(tmp, "scheduler"))
        write_json(os.path.join(tmp, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
        write_json(os.path.join(tmp, "model_index.json"), model_index("TuneAVideoPipeline"))
    return path
