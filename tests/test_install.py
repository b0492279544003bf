"""The package as users install it: a non-editable install runs the demo from
any folder, with nothing but what the package ships (its config and clip).
Costs a wheel build and a short demo run (about a minute)."""
import os
import shutil
import subprocess
import sys

from conftest import REPO


def test_non_editable_install_runs_the_demo_from_another_folder(tmp_path):
    # built from a copy, so the build leaves nothing in the checkout
    source = shutil.copytree(REPO, tmp_path / "source", ignore=shutil.ignore_patterns(
        ".*", "build", "outputs", "*.egg-info", "__pycache__", "tests", "bench"))
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                            "--quiet", "--target", str(site), str(source)], capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import tuneavideo_ms; print(tuneavideo_ms.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=60)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    for command in ("tuneavideo-train", "tuneavideo-edit", "tuneavideo-evaluate", "tuneavideo-convert"):
        helped = subprocess.run([str(site / "bin" / command), "--help"], capture_output=True, text=True,
                                cwd=elsewhere, env=env, timeout=120)
        assert helped.returncode == 0, helped.stderr
        assert helped.stdout.startswith(f"usage: {command}"), helped.stdout
    demo = subprocess.run([sys.executable, "-m", "tuneavideo_ms", "max_train_steps=2",
                           "checkpointing_steps=100", "validation_data.num_inference_steps=2",
                           "validation_data.num_inv_steps=2", "mode=pynative"], capture_output=True,
                          text=True, cwd=elsewhere, env=env, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "demo done" in demo.stdout
    samples = elsewhere / "outputs" / "demo" / "samples" / "sample-2"
    assert sorted(os.listdir(samples)) == sorted(["prompts.json"] + [f"{p}.{ext}" for p in (
        "a man, wearing pink clothes, is skiing at sunset",
        "spider man is skiing on the beach, cartoon style")
        for ext in ("gif", "mp4")])
