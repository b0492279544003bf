"""weights_convert on diffusers folders and tuned Tune-A-Video UNets (single files: test_ldm.py)."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from conftest import REPO
from torch_reference import SD2_CONFIG, VideoUNetOracle, make_unet_2d
from tuneavideo_ms import tiny
from tuneavideo_ms.models import UNet3DConditionModel
from tuneavideo_ms.pipelines import TuneAVideoPipeline
from tuneavideo_ms.weights import TensorRef, read_state_dict, write_safetensors
from weights_convert import convert


def _run(*args):
    return subprocess.run([sys.executable, "-m", "weights_convert", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_pipeline_folder_to_mindspore_and_back(tmp_path):
    src = tiny.build_tiny_sd(str(tmp_path / "sd"))
    result = _run("--src", src, "--dst", str(tmp_path / "ms"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pipeline" in result.stdout
    assert os.path.isfile(tmp_path / "ms" / "unet" / "diffusion_pytorch_model.ckpt")
    assert os.path.isfile(tmp_path / "ms" / "text_encoder" / "model.ckpt")
    assert os.path.isfile(tmp_path / "ms" / "tokenizer" / "vocab.json")
    # mindspore reads the files itself, and the pipeline loads the folder with identical weights
    unet_file = tmp_path / "ms" / "unet" / "diffusion_pytorch_model.ckpt"
    assert "conv_in.weight" in ms.load_checkpoint(str(unet_file))
    converted = TuneAVideoPipeline.from_pretrained(str(tmp_path / "ms"))
    original = TuneAVideoPipeline.from_pretrained(src)
    for a, b in ((converted.unet, original.unet), (converted.vae, original.vae),
                 (converted.text_encoder, original.text_encoder)):
        for (n, p), (_, q) in zip(a.parameters_and_names(), b.parameters_and_names()):
            assert np.array_equal(p.asnumpy(), q.asnumpy()), n
    # and back: bit-identical tensors under the original names
    convert(str(tmp_path / "ms"), str(tmp_path / "back"), to="diffusers")
    for part, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        before = read_state_dict(os.path.join(src, part, name + ".safetensors"))
        after = read_state_dict(tmp_path / "back" / part / (name + ".safetensors"))
        assert before.keys() == after.keys()
        assert all(np.array_equal(before[k], after[k]) for k in before), part


def test_tuned_video_unet_converts_and_gives_the_same_outputs(tmp_path):
    """A UNet tuned by the PyTorch Tune-A-Video (3D config, .bin, SD 2.x-like) -> MindSpore -> back."""
    VideoUNetOracle(make_unet_2d(SD2_CONFIG), 2).eval().save_original_format(tmp_path / "unet")
    convert(str(tmp_path / "unet"), str(tmp_path / "ms"))
    convert(str(tmp_path / "unet"), str(tmp_path / "half"), dtype="fp16")
    a = UNet3DConditionModel.from_pretrained(str(tmp_path / "unet"))
    b = UNet3DConditionModel.from_pretrained(str(tmp_path / "ms"))
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 4, 2, 8, 8)).astype(np.float32))
    c = ms.Tensor(np.random.default_rng(1).standard_normal((1, 7, 1024)).astype(np.float32))
    assert np.array_equal(a(x, 5, c).asnumpy(), b(x, 5, c).asnumpy())
    full = os.path.getsize(tmp_path / "ms" / "diffusion_pytorch_model.ckpt")
    half = os.path.getsize(tmp_path / "half" / "diffusion_pytorch_model.ckpt")
    assert half < 0.55 * full
    UNet3DConditionModel.from_pretrained(str(tmp_path / "half"))
    convert(str(tmp_path / "ms"), str(tmp_path / "back"), to="diffusers")
    before = read_state_dict(tmp_path / "unet" / "diffusion_pytorch_model.bin")
    after = read_state_dict(tmp_path / "back" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_bad_sources_leave_nothing_behind(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown layout .* found readme.txt"):
        convert(str(tmp_path / "odd"), str(tmp_path / "out"))
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes((99).to_bytes(8, "little") + b"{")
    with pytest.raises(Exception, match="nothing written .*corrupt safetensors header"):
        convert(str(folder), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out") and sorted(os.listdir(tmp_path)) == ["bad", "odd"]
    (tmp_path / "out").mkdir()
    result = _run("--src", str(tmp_path / "odd"), "--dst", str(tmp_path / "out"))
    assert result.returncode != 0 and "unknown layout" in result.stderr
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert(str(tmp_path / "bad"), str(tmp_path / "out"))


def test_the_converter_never_destroys_its_source(tmp_path):
    """A destination equal to, inside or holding the source is refused, --overwrite or not."""
    run = tmp_path / "outputs" / "x"
    unet = run / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text("{}")
    write_safetensors(unet / "diffusion_pytorch_model.safetensors",
                      {"w": TensorRef.of(np.ones(3, np.float32))})
    before = sorted(os.listdir(unet))
    for dst, relation in ((unet, "is"), (unet / "ms", "is inside"), (run, "contains"),
                          (tmp_path, "contains")):
        with pytest.raises(ValueError, match=f"{relation} the source .*would destroy the source"):
            convert(str(unet), str(dst), overwrite=True, dtype="fp16")
    assert sorted(os.listdir(unet)) == before
    result = _run("--src", str(unet), "--dst", str(run), "--overwrite")
    assert result.returncode != 0 and "would destroy the source" in result.stderr
    assert sorted(os.listdir(unet)) == before
