"""Tiny CLIP models made with transformers (test-only): random weights, the hub-sd1 fixture's tokenizer and an
image processor with a small crop, saved as transformers saves them; and the benchmark's metrics transcribed
with PyTorch from its evaluation script's definitions."""
import contextlib
import json
import os

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from conftest import HUB_SD1

TOKENIZER = os.path.join(HUB_SD1, "tokenizer")


@contextlib.contextmanager
def float64(*models):
    """`models` in float64, and torch's default dtype too: transformers builds CLIP's causal mask in the
    default dtype, with the model's dtype's smallest value."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            yield [m.double() for m in models]
    finally:
        torch.set_default_dtype(default)


def save_tiny_clip(folder, seed=0, hidden_act="quick_gelu", legacy=False):
    """A tiny CLIPModel written to `folder` as transformers writes it (model.safetensors), or, `legacy`, as
    checkpoints older transformers wrote are (pytorch_model.bin with the position_ids buffers, a config with
    `text_config_dict` over `text_config` and the eos id 2 of old configs). Returns the torch model."""
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=2 if legacy else tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8, hidden_act=hidden_act)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    with torch.no_grad():  # every parameter perturbed (norms, biases), so a misplaced one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder, safe_serialization=not legacy)
    if legacy:
        state = model.state_dict()
        for tower, n in (("text", 77), ("vision", (32 // 8) ** 2 + 1)):
            state[f"{tower}_model.embeddings.position_ids"] = torch.arange(n)[None]
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        config["text_config_dict"] = {"hidden_act": hidden_act}
        config["text_config"]["hidden_act"] = "quick_gelu" if hidden_act == "gelu" else "gelu"
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
    tokenizer.save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return model


def _inputs(folder, frames, prompt, resize):
    processor = CLIPImageProcessor.from_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    images = [Image.fromarray(f).resize((resize, resize)) for f in frames]
    pixels = torch.from_numpy(processor(images=images, return_tensors="np")["pixel_values"]).double()
    ids = torch.from_numpy(tokenizer([prompt], padding=True, return_tensors="np").input_ids)
    return pixels, ids


def reference_scores(clip, clip_folder, frames, prompt, pickscore=None, pickscore_folder=None, resize=480):
    """The three metrics as the benchmark's script computes them, in float64."""
    n = len(frames)
    with float64(clip) as (clip,):
        pixels, ids = _inputs(clip_folder, frames, prompt, resize)
        image = clip.get_image_features(pixel_values=pixels).numpy()
        logits = clip(input_ids=ids, pixel_values=pixels).logits_per_image.numpy()
    image = image / np.linalg.norm(image, axis=-1, keepdims=True)
    similarity = image @ image.T
    np.fill_diagonal(similarity, 0)
    scores = {"frame_consistency": similarity.sum() / (n * (n - 1)) * 100, "text_alignment": logits.mean()}
    if pickscore is not None:
        with float64(pickscore) as (pickscore,):
            pixels, ids = _inputs(pickscore_folder, frames, prompt, resize)
            image = pickscore.get_image_features(pixel_values=pixels)
            text = pickscore.get_text_features(input_ids=ids)
            image = image / image.norm(dim=-1, keepdim=True)
            text = text / text.norm(dim=-1, keepdim=True)
            scores["pick_score"] = float((pickscore.logit_scale.exp() * (text @ image.T)[0]).mean())
    return {k: float(v) for k, v in scores.items()}
