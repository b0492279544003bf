"""The CLIP model against transformers', the benchmark's metrics against a transcription of its definitions,
the evaluate command on each kind of video, and the inputs it refuses."""
import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
import torch

from transformers import CLIPTokenizer

from clip_reference import TOKENIZER, float64, reference_scores, save_tiny_clip
from conftest import BUNDLED_CLIP, HUB_SD1, rel_err
from tuneavideo_ms.data import read_frames
from tuneavideo_ms.metrics import VideoEvaluator
from tuneavideo_ms.models.clip import CLIPModel
from tuneavideo_ms.video_io import save_video

PROMPT = "a man is skiing down a snowy hill"


@pytest.fixture(scope="module")
def clip_models(tmp_path_factory):
    """(folder, torch model) of a CLIP-like model and of a PickScore-like one in the old format (gelu,
    pytorch_model.bin, text_config_dict)."""
    root = tmp_path_factory.mktemp("clip")
    clip = save_tiny_clip(str(root / "clip"), seed=0)
    pickscore = save_tiny_clip(str(root / "pickscore"), seed=1, hidden_act="gelu", legacy=True)
    return (str(root / "clip"), clip), (str(root / "pickscore"), pickscore)


@pytest.fixture(scope="module")
def frames():
    return read_frames(BUNDLED_CLIP)[:6]


def test_embeddings_equal_transformers(clip_models, rng):
    pixels = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    ids = tokenizer(["a man is skiing", "a cat"], padding="max_length", max_length=12,
                    return_tensors="np").input_ids
    for folder, reference in clip_models:
        ours = CLIPModel.from_pretrained(folder)
        with float64(reference) as (reference,):
            image = reference.get_image_features(pixel_values=torch.from_numpy(pixels).double()).numpy()
            text = reference.get_text_features(input_ids=torch.from_numpy(ids)).numpy()
        assert rel_err(ours.get_image_features(ms.Tensor(pixels)).asnumpy(), image) < 1e-5
        assert rel_err(ours.get_text_features(ms.Tensor(ids.astype(np.int32))).asnumpy(), text) < 1e-5
        assert abs(float(ours.logit_scale.asnumpy()) - reference.logit_scale.item()) < 1e-6


def test_metrics_equal_the_benchmark_definitions(clip_models, frames):
    (clip_folder, clip), (pick_folder, pickscore) = clip_models
    evaluate = VideoEvaluator(clip_folder, pick_folder)
    other = read_frames(os.path.join(os.path.dirname(BUNDLED_CLIP), "man-skiing.mp4"))[8:12]
    shuffled = [frames[i] for i in (3, 0, 5, 1, 4, 2)]
    results = {}
    for name, video in (("clip", frames), ("shuffled", shuffled), ("two clips", frames[:3] + other)):
        ours = evaluate(video, PROMPT)
        expected = reference_scores(clip, clip_folder, video, PROMPT, pickscore, pick_folder)
        assert set(ours) == {"frame_consistency", "text_alignment", "pick_score"}
        for key in expected:
            assert abs(ours[key] - expected[key]) <= 1e-5 * max(1.0, abs(expected[key])), (name, key)
        results[name] = ours
    # a metric over all pairs of frames and a mean over frames: the order of the frames changes nothing
    for key in results["clip"]:
        assert abs(results["clip"][key] - results["shuffled"][key]) < 1e-4
    assert results["two clips"]["frame_consistency"] != pytest.approx(results["clip"]["frame_consistency"])


def _evaluate(argv, capsys):
    from tuneavideo_ms.commands.evaluate import main
    main(argv + ["--device", "CPU", "--mode", "pynative"])
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def videos(tmp_path_factory, frames):
    """The same frames as a GIF, an MP4 and a folder of JPEGs, and a run's samples as training writes them."""
    import imageio.v2 as imageio
    root = tmp_path_factory.mktemp("videos")
    video = np.stack(frames).transpose(3, 0, 1, 2) / 255.0
    paths = {ext: save_video(video, str(root / f"clip.{ext}")) for ext in ("gif", "mp4")}
    os.makedirs(root / "frames")
    for i, frame in enumerate(frames):
        imageio.imwrite(root / "frames" / f"{i:05d}.jpg", frame)
    paths["frames"] = str(root / "frames")
    edit = root / "run" / "samples" / "sample-1"
    os.makedirs(edit)
    shutil.copy(paths["gif"], edit / "a man is skiing.gif")
    shutil.copy(paths["mp4"], edit / "a man is surfing.mp4")
    with open(edit / "prompts.json", "w") as f:
        json.dump({"a man is skiing": "a man is skiing", "a man is surfing": "a man is surfing"}, f)
    paths["run"] = str(root / "run")
    return paths


def test_command_scores_gif_mp4_and_frames(clip_models, videos, tmp_path, capsys):
    (clip_folder, _), (pick_folder, _) = clip_models
    evaluate = VideoEvaluator(clip_folder, pick_folder)
    for kind in ("gif", "mp4", "frames"):
        out = tmp_path / f"{kind}.json"
        printed = _evaluate(["--clip_model_path", clip_folder, "--pickscore_model_path", pick_folder,
                             "--video", videos[kind], "--prompt", PROMPT, "--json", str(out)], capsys)
        assert "frame_consistency:" in printed and "pick_score:" in printed
        with open(out) as f:
            scores = json.load(f)
        expected = evaluate(read_frames(videos[kind]), PROMPT)
        assert scores == pytest.approx(expected, rel=1e-6)


def test_command_scores_a_runs_outputs(clip_models, videos, tmp_path, capsys):
    clip_folder = clip_models[0][0]
    out = tmp_path / "run.json"
    printed = _evaluate(["--clip_model_path", clip_folder, "--outputs", videos["run"], "--json", str(out)],
                        capsys)
    with open(out) as f:
        scores = json.load(f)
    assert [(r["video"], r["prompt"]) for r in scores["videos"]] == [
        (os.path.join("samples", "sample-1", "a man is skiing.gif"), "a man is skiing"),
        (os.path.join("samples", "sample-1", "a man is surfing.mp4"), "a man is surfing")]
    assert set(scores["mean"]) == {"frame_consistency", "text_alignment"}
    assert scores["mean"]["text_alignment"] == pytest.approx(
        np.mean([r["text_alignment"] for r in scores["videos"]]))
    assert "mean over 2 videos" in printed


@pytest.mark.parametrize("case", ["not clip", "one frame", "empty prompt", "no processor"])
def test_command_refuses_bad_inputs(clip_models, videos, tmp_path, case, capsys):
    clip_folder = clip_models[0][0]
    argv = ["--clip_model_path", clip_folder, "--video", videos["gif"], "--prompt", PROMPT]
    expected = {"not clip": "not a CLIP model", "one frame": "has 1 frame",
                "empty prompt": "the prompt is empty", "no processor": "no preprocessor_config.json"}[case]
    if case == "not clip":
        argv[1] = os.path.join(HUB_SD1, "text_encoder")
    elif case == "one frame":
        os.makedirs(tmp_path / "one")
        shutil.copy(os.path.join(videos["frames"], "00000.jpg"), tmp_path / "one")
        argv[3] = str(tmp_path / "one")
    elif case == "empty prompt":
        argv[5] = "  "
    else:
        shutil.copytree(clip_folder, tmp_path / "bare")
        os.remove(tmp_path / "bare" / "preprocessor_config.json")
        argv[1] = str(tmp_path / "bare")
    with pytest.raises(SystemExit) as exit_info:
        _evaluate(argv + ["--json", str(tmp_path / "scores.json")], capsys)
    assert expected in str(exit_info.value)
    assert not os.path.exists(tmp_path / "scores.json")
