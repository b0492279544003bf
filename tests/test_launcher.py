"""The cluster launchers on CPU worker processes: data-parallel tuning through
msrun equals one process with the whole batch; a crashing worker fails the
launch with its log tail; many clips run N at a time and a failing one is
reported without stopping the others. PyNative: a graph compile per worker
would cost more than the few steps run here."""
import os
import subprocess

import numpy as np
import pytest

from clip_reference import save_tiny_clip
from conftest import BUNDLED_CLIP, DEMO_CONFIG, REPO, example_clip
from tuneavideo_ms import tiny, training
from tuneavideo_ms.config import load_config
from tuneavideo_ms.weights import read_state_dict

DEMO = DEMO_CONFIG
# adam_epsilon=1: Adam's first steps move each weight by +-lr whatever its gradient's size, so
# rounding-level differences in near-zero gradients (a batch-2 sum against the all-reduce of two
# batch-1 gradients) would flip whole steps; with a large epsilon the update follows the gradient.
COMMON = ["train_data.n_sample_frames=2", "validation_data.prompts=[]", "max_train_steps=1",
          "checkpointing_steps=1", "mode=pynative", "gradient_checkpointing=False", "adam_epsilon=1.0",
          "learning_rate=1e-1"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny.build_tiny_sd(str(tmp_path_factory.mktemp("sd") / "tiny-sd"))


def _launch(script, *args, timeout=600):
    return subprocess.run([os.path.join(REPO, "tools", script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _trained(output_dir):
    return read_state_dict(os.path.join(output_dir, "checkpoint-1", "trainable.safetensors"))


def test_two_workers_equal_one_process_with_batch_two(sd, tmp_path):
    settings = [f"pretrained_model_path={sd}", f"train_data.video_path={example_clip('man-surfing.mp4')}",
                *COMMON]
    logs = tmp_path / "logs"
    result = _launch("launch_train.sh", "--workers", "2", "--config", DEMO, "--log-dir", str(logs),
                     "--master-port", "8157", *settings, f"output_dir={tmp_path / 'dp'}")
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    training.main(load_config(DEMO, settings + [f"output_dir={tmp_path / 'batch2'}", "train_batch_size=2"]))
    training.main(load_config(DEMO, settings + [f"output_dir={tmp_path / 'batch1'}"]))
    dp, batch2, batch1 = (_trained(tmp_path / d) for d in ("dp", "batch2", "batch1"))
    assert max(np.abs(dp[k] - batch2[k]).max() for k in dp) < 1e-5
    assert max(np.abs(batch1[k] - batch2[k]).max() for k in dp) > 1e-4  # the comparison can fail
    # worker 0 alone writes; the other logs to msrun's worker_1.log
    worker0, worker1 = ((logs / f"worker_{r}.log").read_text() for r in (0, 1))
    assert "saved" in worker0 and "saved" not in worker1 and "step 1 loss" in worker1
    assert "loss" not in (logs / "scheduler.log").read_text()  # msrun's scheduler runs the script too
    assert (tmp_path / "dp" / "train.log").read_text().count("step 1 loss") == 1
    assert os.path.isdir(tmp_path / "dp" / "unet")


def test_a_crashing_worker_fails_the_launch_with_its_log(sd, tmp_path, monkeypatch):
    monkeypatch.setenv("MS_NODE_TIMEOUT", "5")  # msrun notices a dead worker by heartbeat, 30 s by default
    result = _launch("launch_train.sh", "--workers", "2", "--config", DEMO, "--log-dir",
                     str(tmp_path / "logs"), "--master-port", "8158", f"pretrained_model_path={sd}",
                     f"output_dir={tmp_path / 'out'}", f"train_data.video_path={tmp_path / 'missing.mp4'}",
                     *COMMON)
    assert result.returncode != 0
    assert "last 30 lines of" in result.stderr and "video not found" in result.stderr


def test_many_clips_run_n_at_a_time_and_a_failure_is_reported(sd, tmp_path):
    clip_model = str(tmp_path / "clip")
    save_tiny_clip(clip_model)
    configs = []
    for name, clip, scored in (("skiing", BUNDLED_CLIP, True),
                               ("absent", str(tmp_path / "absent.mp4"), False),
                               ("surfing", example_clip("man-surfing.mp4"), False)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"pretrained_model_path: {sd}\noutput_dir: {tmp_path / name}\n"
                        f"train_data:\n  video_path: {clip}\n  prompt: a man\n  n_sample_frames: 2\n"
                        "validation_data:\n  prompts: [a cat]\n  video_length: 2\n  num_inference_steps: 1\n"
                        "  guidance_scale: 1.0\n  use_inv_latent: false\n"
                        + (f"  clip_model_path: {clip_model}\n" if scored else "") +
                        "trainable_modules: [attn1.to_q, attn2.to_q, attn_temp]\nmax_train_steps: 1\n")
        configs.append(str(path))
    result = _launch("launch_edit.sh", "--workers", "2", "--configs", *configs, "--log-dir",
                     str(tmp_path / "logs"), "mode=pynative", "gradient_checkpointing=False",
                     "train_data.width=64", "train_data.height=64", "validation_data.width=64",
                     "validation_data.height=64")
    assert result.returncode != 0
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["skiing"][1] == "ok" and rows["surfing"][1] == "ok" and rows["absent"][1] == "FAILED (1)"
    assert "video not found" in result.stderr
    # the metrics of the last validation where the config asks for them
    assert float(rows["skiing"][3]) > 0 and rows["skiing"][5] == "-" and rows["surfing"][3:6] == ["-"] * 3
    for name in ("skiing", "surfing"):
        assert os.path.isfile(tmp_path / name / "samples" / "sample-1.gif")
    assert not os.path.exists(tmp_path / "absent" / "samples")


def test_launchers_refuse_mistakes_before_starting_anything(tmp_path):
    same = _launch("launch_edit.sh", "--workers", "2", "--configs",
                   os.path.join(REPO, "configs", "man-skiing.yaml"),
                   os.path.join(REPO, "configs", "car-turn.yaml"), f"output_dir={tmp_path / 'one'}")
    assert same.returncode == 2 and "both write to" in same.stderr
    assert "give each clip its own output_dir" in same.stderr
    assert not os.path.exists(tmp_path / "one")
    for script in ("launch_train.sh", "launch_edit.sh"):
        helped = _launch(script, "--help")
        assert helped.returncode == 0 and helped.stdout.startswith(("Data-parallel",
                                                                    "Many clips")), helped.stdout
        assert "set -uo" not in helped.stdout
        missing = _launch(script, "--workers")
        assert missing.returncode == 2 and "--workers needs a value" in missing.stderr
