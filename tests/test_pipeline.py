"""VAE and text encoder against diffusers/transformers; the pipeline and the
inference command on the tiny model."""
import json
import os
import re
import subprocess
import sys

import imageio.v2 as imageio
import mindspore as ms
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from transformers import CLIPTextConfig, CLIPTokenizer
from transformers import CLIPTextModel as TorchCLIPTextModel

from clip_reference import save_tiny_clip
from conftest import example_clip, rel_err
from torch_reference import assert_matches_torch
from tuneavideo_ms import tiny
from tuneavideo_ms.models.text_encoder import CLIPTextModel
from tuneavideo_ms.models.vae import AutoencoderKL
from tuneavideo_ms.editing import prompt_filenames
from tuneavideo_ms.pipelines import TuneAVideoPipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = example_clip("man-skiing.mp4")


def _perturb(model, scale=0.02):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def test_vae_equals_diffusers(tmp_path, rng):
    torch.manual_seed(0)
    ref = _perturb(TorchAutoencoderKL(**tiny.VAE_CONFIG))
    ref.save_pretrained(tmp_path, safe_serialization=False)
    vae = AutoencoderKL.from_pretrained(str(tmp_path))
    images = rng.uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32)
    mean, std = vae.encode(ms.Tensor(images))
    with torch.no_grad():
        posterior = ref.encode(torch.from_numpy(images)).latent_dist
    assert rel_err(mean.asnumpy(), posterior.mean.numpy()) < 1e-5
    assert rel_err(std.asnumpy(), posterior.std.numpy()) < 1e-5
    latents = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
    decoded = vae.decode(ms.Tensor(latents)).asnumpy()

    class Decode(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z).sample
    assert_matches_torch(decoded, Decode(ref), latents)


@pytest.mark.parametrize("act,eos", [("quick_gelu", 2), ("gelu", tiny.VOCAB_SIZE - 1)], ids=["sd1", "sd2"])
def test_text_encoder_and_tokenizer_equal_transformers(tmp_path, act, eos):
    config = dict(tiny.TEXT_ENCODER_CONFIG, hidden_act=act, eos_token_id=eos)
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    torch.manual_seed(0)
    ref = _perturb(TorchCLIPTextModel(CLIPTextConfig(**config)), 0.05)
    ref.save_pretrained(tmp_path / "text_encoder", safe_serialization=(act == "gelu"))
    tiny.write_tokenizer(tmp_path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    ids = tokenizer(["a man is skiing", "Spider Man is skiing on the beach, cartoon style"],
                    padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    # byte-level spelling: "a" is the word-final byte a, then the end token pads
    assert ids.shape == (2, 77) and ids[0, 0] == tiny.VOCAB_SIZE - 2 and ids[0, 1] == 256 + ord("a")
    encoder = CLIPTextModel.from_pretrained(str(tmp_path / "text_encoder"))
    hidden, pooled = encoder(ms.Tensor(ids.astype(np.int32)))
    with torch.no_grad():
        out = ref(torch.from_numpy(ids.astype(np.int64)))
    assert rel_err(hidden.asnumpy(), out.last_hidden_state.numpy()) < 1e-5
    assert rel_err(pooled.asnumpy(), out.pooler_output.numpy()) < 1e-5


# ----------------------------------------------------------------------------- the pipeline (graph mode)

@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    ms.set_context(mode=ms.GRAPH_MODE)
    path = tiny.build_tiny_sd(str(tmp_path_factory.mktemp("sd") / "tiny-sd"))
    yield TuneAVideoPipeline.from_pretrained(path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


SAMPLING = dict(video_length=2, height=64, width=64, num_inference_steps=2)


def test_pipeline_is_reproducible_and_uses_given_latents(pipe, rng):
    a = pipe("a man is skiing", seed=3, **SAMPLING).videos
    b = pipe("a man is skiing", seed=3, **SAMPLING).videos
    assert a.shape == (1, 3, 2, 64, 64) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b)
    latents = rng.standard_normal((1, 4, 2, 8, 8)).astype(np.float32)
    c = pipe("a man is skiing", latents=latents, seed=1, **SAMPLING).videos
    d = pipe("a man is skiing", latents=latents, seed=2, **SAMPLING).videos
    assert np.array_equal(c, d) and not np.array_equal(a, c)


def test_guidance_one_skips_unconditional_branch_and_negative_prompt_matters(pipe, monkeypatch):
    calls = []
    denoise = pipe.denoise
    monkeypatch.setattr(pipe, "denoise", lambda *a, **k: calls.append(a[2].shape[0]) or denoise(*a, **k))
    pipe("a man is skiing", guidance_scale=1.0, seed=0, **SAMPLING)
    assert calls == [1, 1]  # one text embedding per step: no unconditional half
    calls.clear()
    plain = pipe(["a man is skiing"], guidance_scale=7.5, seed=0, **SAMPLING).videos
    assert calls == [2, 2]
    negative = pipe(["a man is skiing"], guidance_scale=7.5, negative_prompt=["blurry"], seed=0,
                    **SAMPLING).videos
    assert not np.array_equal(plain, negative)


def test_many_prompts_from_one_inverted_latent(pipe, rng):
    latents = rng.standard_normal((1, 4, 2, 8, 8)).astype(np.float32)
    both = pipe(["a", "b"], latents=latents, seed=0, **SAMPLING).videos
    single = pipe("b", latents=latents, seed=0, **SAMPLING).videos
    assert both.shape[0] == 2 and np.allclose(both[1], single[0], atol=1e-5)


def test_pipeline_bad_inputs(pipe, tmp_path):
    with pytest.raises(ValueError, match=r"multiples of 8: height 60 \(nearest that work: 56 or 64\)"):
        pipe("x", video_length=2, height=60, width=64)
    with pytest.raises(ValueError, match=r"latents have shape \(1, 4, 3, 8, 8\)"):
        pipe("x", latents=np.zeros((1, 4, 3, 8, 8), np.float32), **SAMPLING)
    with pytest.raises(ValueError, match="negative_prompt has 1 entries for 2 prompts"):
        pipe(["x", "y"], negative_prompt=["z"], **SAMPLING)
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe.encode_video(np.zeros((1, 3, 2, 60, 64), np.float32))
    os.makedirs(tmp_path / "sd" / "unet")
    with pytest.raises(FileNotFoundError, match="has no vae/ folder"):
        TuneAVideoPipeline.from_pretrained(str(tmp_path / "sd"), unet=pipe.unet)


# ----------------------------------------------------------------------------- tools/infer.py

def _infer(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "infer.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


def test_infer_edits_a_real_clip(tmp_path):
    path = tiny.build_tiny_sd(str(tmp_path / "sd"))
    save_tiny_clip(str(tmp_path / "clip"))
    out = tmp_path / "out"
    result = _infer("--pretrained_model_path", path, "--video", CLIP, "--prompts", "a man is surfing", "a/b",
                    "--video_length", "3", "--width", "64", "--height", "128", "--num_inv_steps", "2",
                    "--num_inference_steps", "2", "--output_dir", str(out), "--mode", "pynative",
                    "--clip_model_path", str(tmp_path / "clip"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(["a_b.gif", "a_b.mp4", "a man is surfing.gif",
                                              "a man is surfing.mp4", "grid.gif", "inv_latents.npy",
                                              "metrics.json", "prompts.json"])
    names = json.loads((out / "prompts.json").read_text())
    assert names == {"a man is surfing": "a man is surfing", "a_b": "a/b"}
    scores = json.loads((out / "metrics.json").read_text())
    assert [(r["video"], r["prompt"]) for r in scores["videos"]] == list(names.items())
    assert "a/b: frame_consistency" in result.stderr  # the log
    for name in ("a man is surfing.gif", "a man is surfing.mp4"):
        frames = imageio.mimread(out / name)
        assert len(frames) == 3 and frames[0].shape[:2] == (128, 64), name
    assert np.load(out / "inv_latents.npy").shape == (1, 4, 3, 16, 8)


def test_infer_reports_a_missing_or_unreadable_clip(tmp_path):
    result = _infer("--pretrained_model_path", str(tmp_path), "--video", str(tmp_path / "none.mp4"),
                    "--prompts", "x", "--mode", "pynative")
    assert result.returncode != 0 and "video not found" in result.stderr
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    result = _infer("--pretrained_model_path", str(tmp_path), "--video", str(tmp_path / "bad.mp4"),
                    "--prompts", "x", "--mode", "pynative")
    assert result.returncode != 0 and "cannot read this video" in result.stderr


def test_prompts_get_distinct_safe_file_names():
    prompts = ["a/b", "a_b", " a_b ", "a man is skiing", "a man is skiing", "x" * 300, "x" * 299, "",
               "../etc"]
    stems = prompt_filenames(prompts)
    assert len(set(stems)) == len(prompts)
    assert stems[3].startswith("a man is skiing-") and stems[4].startswith(stems[3] + "-")
    assert all(len(s.encode()) + len(".mp4") <= 255 and "/" not in s and not s.startswith(".") for s in stems)
    assert stems[0].startswith("a_b-") and stems[7] == "empty-prompt" and stems[8] == "_etc"


def test_infer_refuses_bad_arguments_before_loading(tmp_path):
    (tmp_path / "text.npy").write_text("not an array")
    (tmp_path / "file").write_text("x")
    for args, message in (
            (["--inv_latents", str(tmp_path / "text.npy")],
             "--inv_latents .*text.npy: not an array saved by infer.py or training .*not a .npy file"),
            (["--width", "100"], r"width 100 \(nearest that work: 96 or 104\)"),
            (["--video_length", "0"], "argument --video_length: 0 is below 1"),
            (["--output_dir", str(tmp_path / "file")], "--output_dir .* is a file"),
            (["--unet", str(tmp_path / "none")], "--unet .*none: not a folder"),
            (["--pickscore_model_path", str(tmp_path)],
             "--pickscore_model_path is set without --clip_model_path"),
            (["--clip_model_path", str(tmp_path)], "--clip_model_path .*: config.json not found")):
        result = _infer("--pretrained_model_path", str(tmp_path), "--prompts", "x", *args)
        assert result.returncode != 0 and re.search(message, result.stderr), (args, result.stderr[-500:])
        assert "Traceback" not in result.stderr
