"""Stable Diffusion folders as users download them: tests/data/hub-sd1 and
hub-sd2 were written by diffusers 0.11.1 and transformers 4.30.2, as the
Hub's SD 1.x / 2.x folders were (legacy VAE attention names, position_ids
buffers, a safety checker, PNDM and v-prediction scheduler configs), and the
layouts derived from them here: fp16 files and variants, shards, a Hub id in
the Hugging Face cache."""
import json
import os
import re
import shutil
import subprocess
import sys

import imageio.v2 as imageio
import mindspore as ms
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from conftest import DEMO_CONFIG, HUB_SD1, HUB_SD2, REPO, example_clip, rel_err
from torch_reference import assert_matches_torch
from tuneavideo_ms.data import read_video
from tuneavideo_ms.models import UNet3DConditionModel
from tuneavideo_ms.models.text_encoder import CLIPTextModel
from tuneavideo_ms.pipelines import TuneAVideoPipeline
from tuneavideo_ms.weights import TensorRef, WeightsError, read_state_dict, write_safetensors
from weights_convert import convert

FOLDERS = [HUB_SD1, HUB_SD2]
IDS = ["hub-sd1", "hub-sd2"]


@pytest.fixture(scope="module", params=FOLDERS, ids=IDS)
def folder(request):
    return request.param


@pytest.fixture(scope="module")
def reference(folder):
    """diffusers 0.35.2's own pipeline, loaded from the same folder."""
    return StableDiffusionPipeline.from_pretrained(folder).to(torch.float32)


def _unet_sample(rng, frames=2, size=(16, 16)):
    still = rng.standard_normal((1, 4, 1) + size).astype(np.float32)
    return np.repeat(still, frames, axis=2)


def test_folder_equals_diffusers(folder, reference, rng):
    """Token ids, text embedding, VAE latents of real frames and the inflated UNet on a static clip."""
    pipe = TuneAVideoPipeline.from_pretrained(folder)
    prompts = ["a man is skiing", "spider man is skiing on the beach, cartoon style"]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="np").input_ids
    ref_ids = reference.tokenizer(prompts, padding="max_length",
                                  max_length=reference.tokenizer.model_max_length, truncation=True,
                                  return_tensors="np").input_ids
    assert np.array_equal(ids, ref_ids)
    embedding = pipe.encode_prompt(prompts).asnumpy()
    with torch.no_grad():
        ref_embedding = reference.text_encoder(torch.from_numpy(ids.astype(np.int64)))[0].numpy()
    assert rel_err(embedding, ref_embedding) < 1e-5

    pixels = read_video(example_clip("man-skiing.mp4"), 2, 64, 64, 0, 4)  # [3, f, h, w]
    latents = pipe.encode_video(pixels[None]).asnumpy()
    with torch.no_grad():
        vae = reference.vae.double()
        frames = torch.from_numpy(pixels.transpose(1, 0, 2, 3)).double()  # [f, 3, h, w]
        ref = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
    assert rel_err(latents[0].transpose(1, 0, 2, 3), ref.numpy()) < 1e-5

    sample = _unet_sample(rng)
    out = pipe.unet(ms.Tensor(sample), 321, ms.Tensor(embedding[:1])).asnumpy()
    for i in range(sample.shape[2]):
        assert_matches_torch(out[:, :, i], reference.unet, sample[:, :, 0], 321, embedding[:1])


def test_folder_loads_through_its_scheduler_config(folder):
    pipe = TuneAVideoPipeline.from_pretrained(folder)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        saved = json.load(f)
    # PNDM's config gives DDIM its noise schedule, and DDIM's defaults the rest, as in the original
    assert pipe.scheduler.config["prediction_type"] == saved["prediction_type"]
    assert pipe.scheduler.config["clip_sample"] == saved.get("clip_sample", True)
    assert pipe.scheduler.config["steps_offset"] == saved["steps_offset"] == 1


def _diffusers_state(pipe):
    return {part: {k: v.numpy() for k, v in getattr(pipe, part).state_dict().items()}
            for part in ("unet", "vae", "text_encoder")}


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "scheduler"])
def test_every_model_config_refuses_an_unknown_key(folder, component, tmp_path):
    """One config reader for every model: the Hub's bookkeeping keys pass, a key the model does not
    know (a typo, another model's config) is refused by name."""
    from tuneavideo_ms.models.vae import AutoencoderKL
    from tuneavideo_ms.schedulers import DDIMScheduler
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    with open(os.path.join(folder, component, name)) as f:
        config = json.load(f)
    make = {"unet": UNet3DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
            "scheduler": DDIMScheduler}[component]
    make(**config)  # as the Hub wrote it
    if config.get("_class_name") == "PNDMScheduler":
        return  # another scheduler's config lends DDIM its noise schedule and nothing else (test_scheduler)
    with pytest.raises(ValueError, match=r"unknown .* config fields: hiden_size \(known: "):
        make(**dict(config, hiden_size=32))


def test_converts_to_mindspore_and_back_to_current_names(folder, reference, tmp_path):
    convert(folder, str(tmp_path / "ms"))
    convert(str(tmp_path / "ms"), str(tmp_path / "back"), to="diffusers")
    names = sorted(os.listdir(tmp_path / "back"))
    assert names == sorted(os.listdir(folder))  # safety checker and feature extractor copied
    assert not any(".bin" in n for n in os.listdir(tmp_path / "back" / "vae"))
    vae = read_state_dict(tmp_path / "back" / "vae" / "diffusion_pytorch_model.safetensors")
    assert "encoder.mid_block.attentions.0.to_q.weight" in vae and not any(".query." in k for k in vae)
    back = StableDiffusionPipeline.from_pretrained(str(tmp_path / "back"))
    expected, got = _diffusers_state(reference), _diffusers_state(back)
    # the files hold exactly current tensors (no position_ids buffer)
    assert set(read_state_dict(tmp_path / "back" / "text_encoder" / "model.safetensors")) == set(
        expected["text_encoder"])
    for part in expected:
        assert expected[part].keys() == got[part].keys(), part
        for name in expected[part]:
            assert np.array_equal(expected[part][name], got[part][name]), f"{part}.{name}"


# ----------------------------------------------------------------------------- layouts derived from hub-sd1

def _copy(tmp_path):
    return shutil.copytree(HUB_SD1, tmp_path / "sd")


def _params(cell):
    return {n: p.asnumpy() for n, p in cell.parameters_and_names()}


def _as_safetensors(path, out, dtype=None, names=None):
    refs = {n: TensorRef.of(v) for n, v in read_state_dict(path).items() if names is None or n in names}
    write_safetensors(out, refs, dtype)


def test_fp16_files_and_variants(tmp_path):
    sd = _copy(tmp_path)
    plain = _params(UNet3DConditionModel.from_pretrained_2d(str(sd), "unet"))
    unet_bin = sd / "unet" / "diffusion_pytorch_model.bin"
    _as_safetensors(unet_bin, sd / "unet" / "diffusion_pytorch_model.fp16.safetensors", "F16")
    _as_safetensors(sd / "text_encoder" / "pytorch_model.bin", sd / "text_encoder" / "model.fp16.safetensors",
                    "F16")
    _as_safetensors(sd / "vae" / "diffusion_pytorch_model.bin",
                    sd / "vae" / "diffusion_pytorch_model.fp16.safetensors", "F16")
    half = UNet3DConditionModel.from_pretrained_2d(str(sd), "unet", variant="fp16")
    for name, value in _params(half).items():
        assert value.dtype == np.float32  # loaded as fp32
        if ".attn_temp." not in name and ".norm_temp." not in name:
            assert np.array_equal(value, plain[name].astype(np.float16).astype(np.float32)), name
    pipe = TuneAVideoPipeline.from_pretrained(str(sd), variant="fp16")
    assert all(v.dtype == np.float32 for v in _params(pipe.text_encoder).values())
    # without a variant the plain files load; with only a variant there, the error says how to load it
    os.remove(unet_bin)
    with pytest.raises(WeightsError,
                       match=r"diffusion_pytorch_model.fp16.safetensors \(a variant: pass variant="):
        UNet3DConditionModel.from_pretrained_2d(str(sd), "unet")
    with pytest.raises(WeightsError, match="the bf16 variant of"):
        UNet3DConditionModel.from_pretrained_2d(str(sd), "unet", variant="bf16")
    # the converter converts the variant when asked, and never copies one unconverted
    convert(str(sd), str(tmp_path / "ms"), variant="fp16")
    assert sorted(os.listdir(tmp_path / "ms" / "unet")) == ["config.json", "diffusion_pytorch_model.ckpt"]
    converted = UNet3DConditionModel.from_pretrained_2d(str(tmp_path / "ms"), "unet")
    assert all(np.array_equal(v, _params(half)[n]) for n, v in _params(converted).items())
    convert(str(sd / "text_encoder"), str(tmp_path / "te"))
    assert sorted(os.listdir(tmp_path / "te")) == ["config.json", "model.ckpt"]


def _shard(path, folder, stem, ext, write):
    """Splits a weight file in two shards and an index as diffusers and transformers write them."""
    state = read_state_dict(path)
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"{stem}-0000{i + 1}-of-00002{ext}"
        write(os.path.join(folder, shard), {n: state[n] for n in part})
        weight_map.update({n: shard for n in part})
    with open(os.path.join(folder, f"{stem}{ext}.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    os.remove(path)


def test_sharded_weights(tmp_path):
    sd = _copy(tmp_path)
    before = TuneAVideoPipeline.from_pretrained(str(sd))
    def write_safetensors_state(path, state):
        write_safetensors(path, {n: TensorRef.of(v) for n, v in state.items()})

    def torch_save(path, state):
        torch.save({n: torch.from_numpy(v) for n, v in state.items()}, path)

    _shard(sd / "unet" / "diffusion_pytorch_model.bin", sd / "unet", "diffusion_pytorch_model",
           ".safetensors", write_safetensors_state)
    _shard(sd / "text_encoder" / "pytorch_model.bin", sd / "text_encoder", "pytorch_model", ".bin",
           torch_save)
    after = TuneAVideoPipeline.from_pretrained(str(sd))
    for part in ("unet", "text_encoder"):
        a, b = _params(getattr(before, part)), _params(getattr(after, part))
        assert all(np.array_equal(a[n], b[n]) for n in a), part
    convert(str(sd), str(tmp_path / "ms"))
    assert sorted(os.listdir(tmp_path / "ms" / "text_encoder")) == ["config.json", "model.ckpt"]
    # an index that points outside its folder is refused
    index = sd / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    with open(index) as f:
        data = json.load(f)
    data["weight_map"]["conv_in.weight"] = "../text_encoder/config.json"
    index.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="is not a file name in"):
        UNet3DConditionModel.from_pretrained_2d(str(sd), "unet")


def test_hub_id_from_the_local_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--CompVis--stable-diffusion-v1-4"
    revision = "39593d5650112b4cc580433f6b0435385882d819"
    shutil.copytree(HUB_SD1, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = TuneAVideoPipeline.from_pretrained("CompVis/stable-diffusion-v1-4")
    unet = UNet3DConditionModel.from_pretrained_2d("CompVis/stable-diffusion-v1-4", subfolder="unet")
    assert all(np.array_equal(v, _params(pipe.unet)[n]) for n, v in _params(unet).items())
    assert isinstance(CLIPTextModel.from_pretrained("CompVis/stable-diffusion-v1-4", "text_encoder"),
                      CLIPTextModel)
    with pytest.raises(FileNotFoundError,
                       match="stabilityai/stable-diffusion-2-1 is neither a folder nor a model in "
                             f"the Hugging Face cache \\({re.escape(str(cache))}\\)"):
        TuneAVideoPipeline.from_pretrained("stabilityai/stable-diffusion-2-1")


# ----------------------------------------------------------------------------- the command lines

def _tool(name, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args], capture_output=True,
                            text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("folder,mode,size", [(HUB_SD1, "graph", (72, 88)), (HUB_SD2, "pynative", (64, 64))],
                         ids=["hub-sd1-graph-72x88", "hub-sd2"])
def test_train_and_infer_commands(tmp_path, folder, mode, size):
    """Two steps of tuning with validation (inversion and sampling), then an edit with the tuned UNet
    (in PyNative: the graphs are the validation's). 72x88 pixels are 9x11 latents, which the UNet's
    downsampling does not divide."""
    height, width = size
    out = tmp_path / "run"
    _tool("train.py", "--config", DEMO_CONFIG, f"pretrained_model_path={folder}", f"output_dir={out}",
          f"train_data.video_path={example_clip('car-turn.mp4')}", "train_data.n_sample_frames=2",
          f"train_data.height={height}", f"train_data.width={width}", "max_train_steps=2", f"mode={mode}",
          "checkpointing_steps=100", "validation_data.prompts=[a jeep car is moving on the snow]",
          "validation_data.video_length=2", f"validation_data.height={height}",
          f"validation_data.width={width}", "validation_data.num_inference_steps=2",
          "validation_data.num_inv_steps=2", "gradient_checkpointing=False",
          "validation_data.guidance_scale=1.0")  # inversion and sampling then share one compiled graph
    assert np.load(out / "inv_latents" / "ddim_latent-2.npy").shape == (1, 4, 2, height // 8, width // 8)
    frames = imageio.mimread(out / "samples" / "sample-2" / "a jeep car is moving on the snow.gif")
    assert len(frames) == 2 and frames[0].shape[:2] == (height, width)
    edit = tmp_path / "edit"
    _tool("infer.py", "--pretrained_model_path", folder, "--unet", str(out / "unet"), "--video",
          example_clip("car-turn.mp4"), "--prompts", "a jeep car is moving on the beach", "--video_length",
          "2", "--height", str(height), "--width", str(width), "--num_inv_steps", "2",
          "--num_inference_steps", "2", "--output_dir", str(edit), "--mode", "pynative")
    frames = imageio.mimread(edit / "a jeep car is moving on the beach.gif")
    assert len(frames) == 2 and frames[0].shape[:2] == (height, width)
