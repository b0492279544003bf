"""Tuning end to end on a real clip, bit-exact resume, fp16 overflow, NaN stop,
gradient checkpointing, and the config checks."""
import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest

from clip_reference import save_tiny_clip
from conftest import BUNDLED_CLIP, DEMO_CONFIG, example_clip, rel_err
from tuneavideo_ms import runtime, tiny, training
from tuneavideo_ms.config import load_config
from tuneavideo_ms.models import UNet3DConditionModel
from tuneavideo_ms.weights import read_state_dict, state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = example_clip("man-surfing.mp4")


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny.build_tiny_sd(str(tmp_path_factory.mktemp("sd") / "tiny-sd"))


def _config(sd, output_dir, *overrides):
    return load_config(DEMO_CONFIG, [
        f"pretrained_model_path={sd}", f"output_dir={output_dir}", f"train_data.video_path={CLIP}",
        "train_data.n_sample_frames=2", "train_data.sample_start_idx=5", "train_data.sample_frame_rate=3",
        "validation_data.prompts=[]", "checkpointing_steps=2", *overrides])


def _weights(path):
    return read_state_dict(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def four_steps(sd, tmp_path_factory):
    """Four steps in graph mode with gradient checkpointing, validated (and scored with CLIP) at the end."""
    out = str(tmp_path_factory.mktemp("run") / "out")
    clip = str(tmp_path_factory.mktemp("clip") / "clip")
    save_tiny_clip(clip)
    training.main(_config(sd, out, "max_train_steps=4", "gradient_checkpointing=True",
                          "validation_data.prompts=[a man is skiing]", "validation_data.video_length=2",
                          "validation_data.num_inv_steps=2", "validation_data.num_inference_steps=2",
                          # one denoiser graph for inversion and sampling
                          "validation_data.guidance_scale=1.0", f"validation_data.clip_model_path={clip}"))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return out


def test_tuning_changes_only_trainable_tensors(sd, four_steps):
    before = UNet3DConditionModel.from_pretrained_2d(sd, subfolder="unet")
    initial = state_dict(before)  # checkpoint shapes, as the saved UNet's
    tuned = _weights(four_steps)
    modules = ("attn1.to_q", "attn2.to_q", "attn_temp")
    changed = {n for n in initial if not np.array_equal(initial[n], tuned[n])}
    trainable = {n for n in initial if any(m in n for m in modules)}
    assert len(trainable) == 112 and changed == trainable
    UNet3DConditionModel.from_pretrained(four_steps, subfolder="unet")


def test_outputs_of_a_run(four_steps):
    names = sorted(os.listdir(four_steps))
    assert names == ["checkpoint-2", "checkpoint-4", "config.yaml", "inv_latents", "samples", "train.log",
                     "unet"]
    assert os.listdir(os.path.join(four_steps, "inv_latents")) == ["ddim_latent-4.npy"]
    samples = os.path.join(four_steps, "samples")
    assert sorted(os.listdir(samples)) == ["metrics.json", "sample-4", "sample-4.gif"]
    assert sorted(os.listdir(os.path.join(samples, "sample-4"))) == [
        "a man is skiing.gif", "a man is skiing.mp4", "metrics.json", "prompts.json"]
    with open(os.path.join(samples, "metrics.json")) as f:
        scores = json.load(f)
    assert list(scores) == ["4"] and scores["4"]["videos"][0]["prompt"] == "a man is skiing"
    assert set(scores["4"]["mean"]) == {"frame_consistency", "text_alignment"}
    log = open(os.path.join(four_steps, "train.log")).read()
    assert "step 4 loss" in log and "saved" in log and "a man is skiing: frame_consistency" in log
    assert load_config(os.path.join(four_steps, "config.yaml")).max_train_steps == 4


def test_resumed_run_equals_uninterrupted_run(sd, tmp_path):
    """4 steps straight, and a run stopped after step 2 (its folder holds only
    checkpoint-2) resumed for 2 more: bit-identical weights and optimizer state.
    PyNative: resuming does not depend on the mode, and two graph compiles
    would cost two minutes (the four_steps fixture trains in graph mode)."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    common = ("gradient_checkpointing=False", "learning_rate=1e-3", "checkpointing_steps=2", "mode=pynative")
    training.main(_config(sd, straight, "max_train_steps=4", *common))
    shutil.copytree(os.path.join(straight, "checkpoint-2"), os.path.join(resumed, "checkpoint-2"))
    training.main(_config(sd, resumed, "max_train_steps=4", "resume_from_checkpoint=latest", *common))
    a, b = _weights(straight), _weights(resumed)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    first_half = read_state_dict(os.path.join(straight, "checkpoint-2", "trainable.safetensors"))
    assert not all(np.array_equal(a[n], first_half[n]) for n in first_half)  # the second half did train
    opt_a = read_state_dict(os.path.join(straight, "checkpoint-4", "optimizer.safetensors"))
    opt_b = read_state_dict(os.path.join(resumed, "checkpoint-4", "optimizer.safetensors"))
    assert all(np.array_equal(opt_a[n], opt_b[n]) for n in opt_a)
    assert "resumed from" in open(os.path.join(resumed, "train.log")).read()


def test_latest_ignores_interrupted_checkpoints(tmp_path):
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-30", ".checkpoint-40.abc.tmp"):
        os.makedirs(tmp_path / name)
    for name in ("checkpoint-2", "checkpoint-10"):
        (tmp_path / name / "state.json").write_text("{}")
    # checkpoint-30 lacks state.json (a copy cut short); the .tmp folder is one still being written
    assert training.latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert training.latest_checkpoint(str(tmp_path / "none")) is None


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(sd, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "INITIAL_LOSS_SCALE", 2.0 ** 40)  # far past fp16's range
    out = str(tmp_path / "fp16")
    training.main(_config(sd, out, "max_train_steps=2", "mixed_precision=fp16", "mode=pynative",
                          "gradient_checkpointing=False"))
    log = open(os.path.join(out, "train.log")).read()
    assert "step 1: gradients overflowed in fp16; step skipped, loss scale 1.09951e+12 -> 5.49756e+11" in log
    before = UNet3DConditionModel.from_pretrained_2d(sd, subfolder="unet")
    tuned = _weights(out)
    assert all(np.array_equal(w, tuned[n]) for n, w in state_dict(before).items())
    state = read_state_dict(os.path.join(out, "checkpoint-2", "optimizer.safetensors"))
    assert state["step"].reshape(-1)[0] == 0


def test_nan_loss_stops_naming_the_step(sd, tmp_path):
    out = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"at step 2 .*Last checkpoint: .*checkpoint-1"):
        training.main(_config(sd, out, "max_train_steps=3", "checkpointing_steps=1", "learning_rate=1e30",
                              "mixed_precision=no", "mode=pynative", "gradient_checkpointing=False"))
    assert sorted(os.listdir(out)) == ["checkpoint-1", "train.log"]
    # the log ends with what stopped the run
    log = open(os.path.join(out, "train.log")).read()
    assert "the run stopped: FloatingPointError: loss is" in log.split("\n\n")[-1]
    assert log.rstrip().endswith("Last checkpoint: " + os.path.join(out, "checkpoint-1"))


def test_a_failed_validation_costs_nothing(sd, tmp_path, monkeypatch):
    """The tuned UNet and config are written before the last validation, and a validation that fails
    is logged with its traceback while the run goes on."""
    def broken(pipe, clip_latents, validation_data, output_dir, step, seed, evaluate):
        saved = os.path.isdir(os.path.join(out, "unet")) and os.path.isfile(os.path.join(out, "config.yaml"))
        raise RuntimeError(f"sampling broke at step {step}, tuned UNet saved: {saved}")
    monkeypatch.setattr(training, "validate", broken)
    out = str(tmp_path / "run")
    assert training.main(_config(sd, out, "max_train_steps=2", "validation_steps=1", "mode=pynative",
                                 "gradient_checkpointing=False", "validation_data.prompts=[x]",
                                 "validation_data.video_length=2")) == out
    log = open(os.path.join(out, "train.log")).read()
    assert "RuntimeError: sampling broke at step 1, tuned UNet saved: False" in log and "step 2 loss" in log
    assert "RuntimeError: sampling broke at step 2, tuned UNet saved: True" in log
    assert "validation failed at step 1, 2" in log
    assert os.path.isfile(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))


def test_bad_paths_fail_before_anything_is_written(sd, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="train_data.video_path: video not found"):
        training.main(_config(sd, str(out), f"train_data.video_path={tmp_path / 'none.mp4'}"))
    with pytest.raises(FileNotFoundError, match="pretrained_model_path: .* is not a folder"):
        training.main(_config(str(tmp_path / "no-model"), str(out)))
    with pytest.raises(FileNotFoundError, match="resume_from_checkpoint: no checkpoint checkpoint-7"):
        training.main(_config(sd, str(out), "resume_from_checkpoint=checkpoint-7"))
    with pytest.raises(ValueError, match="has 16 frames"):  # the clip is read before anything is written
        training.main(_config(sd, str(out), f"train_data.video_path={BUNDLED_CLIP}",
                              "train_data.sample_start_idx=15"))
    with pytest.raises(ValueError, match="validation_data.clip_model_path .*: not a CLIP model"):
        training.main(_config(sd, str(out), "validation_data.prompts=[x]", "validation_data.video_length=2",
                              f"validation_data.clip_model_path={os.path.join(sd, 'text_encoder')}"))
    with pytest.raises(ValueError, match=r"bf16 needs an Ascend device.*\(mixed_precision: fp16 or no\)"):
        training.main(_config(sd, str(out), "mixed_precision=bf16"))
    assert not out.exists()
    out.write_text("a file")
    with pytest.raises(NotADirectoryError, match="output_dir: .* is a file"):
        training.main(_config(sd, str(out)))


def test_gradient_checkpointing_keeps_every_gradient(sd, monkeypatch):
    """Recompute gives every trainable tensor its gradient, equal to the plain
    backward (the original's reentrant checkpointing drops a third of them).
    Every attention runs the fused CPU kernel and its custom backward, which
    the tiny sizes would otherwise leave to the portable one. The plain
    backward runs in PyNative, the recomputed one compiled, as training runs
    it (one graph compile instead of two)."""
    from tuneavideo_ms.runtime import attention
    monkeypatch.setattr(attention, "FUSED_MIN_KEYS", 0)
    monkeypatch.setattr(attention, "FUSED_MIN_SCORES", 0)
    rng = np.random.default_rng(0)
    sample = ms.Tensor(rng.standard_normal((1, 4, 3, 16, 16), dtype=np.float32))
    context = ms.Tensor(rng.standard_normal((1, 77, 32), dtype=np.float32))
    t = ms.Tensor(np.array([500.0], np.float32))
    grads = []
    for recompute in (False, True):
        unet = UNet3DConditionModel.from_pretrained_2d(sd, subfolder="unet")
        params = training.trainable_parameters(unet, ["attn1.to_q", "attn2.to_q", "attn_temp"])
        if recompute:
            training.enable_gradient_checkpointing(unet)

        def loss(x):
            return (unet(x, t, context) ** 2).mean()
        fn = ms.grad(loss, None, params)
        grads.append([g.asnumpy() for g in (ms.jit(fn) if recompute else fn)(sample)])
    plain, recomputed = grads
    assert len(plain) == len(params) == 112
    # attn_temp's q/k/v see no gradient through a zero output projection at the start; everything else does
    zero = [p.name for p, g in zip(params, recomputed) if not np.abs(g).any()]
    assert zero == [p.name for p in params if ".attn_temp.to_" in p.name and "to_out" not in p.name]
    for a, b in zip(plain, recomputed):
        assert rel_err(b, a) < 1e-5


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key learnig_rate; did you mean learning_rate"):
        load_config(None, ["learnig_rate=1"])
    with pytest.raises(ValueError, match="unknown config key train_data.n_frames; did you mean"):
        load_config(None, ["train_data.n_frames=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrained_model_path: x\ntrain_data:\n  prompt: [unclosed\n")
    with pytest.raises(ValueError, match="line 3"):
        load_config(str(bad))
    base = ["pretrained_model_path=x", "output_dir=y", "train_data.video_path=v", "train_data.prompt=p"]
    with pytest.raises(ValueError, match="use_8bit_adam is not available"):
        load_config(None, base + ["use_8bit_adam=true"])
    with pytest.raises(ValueError, match="config needs train_data.prompt"):
        load_config(None, base[:3])
    clips = ("man-skiing", "man-surfing", "rabbit-watermelon", "car-turn")
    for path in [os.path.join(REPO, "configs", f"{n}.yaml") for n in clips] + [DEMO_CONFIG]:
        config = load_config(path)
        assert config.train_data.prompt
        # the example clips are inside the checkout (the demo's path is set by `python -m tuneavideo_ms`)
        assert path == DEMO_CONFIG or os.path.isfile(os.path.join(REPO, config.train_data.video_path))


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine"])
def test_lr_schedules_equal_diffusers(name):
    import torch
    from diffusers.optimization import get_scheduler
    from tuneavideo_ms.optim import lr_lambda
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_scheduler(name, optimizer, num_warmup_steps=5, num_training_steps=20)
    ours = lr_lambda(name, 5, 20)
    for step in range(20):
        assert abs(ours(step) - optimizer.param_groups[0]["lr"]) < 1e-7, step
        optimizer.step()
        reference.step()


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_gradient_clipping_equals_torch(rng, scale):
    import torch
    grads = [rng.standard_normal(shape).astype(np.float32) * scale for shape in ((3, 4), (5,))]
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    clip = ms.jit(training.clip_grad_norm)
    for fn in (training.clip_grad_norm, clip):
        for ours, p in zip(fn(tuple(ms.Tensor(g) for g in grads), 1.0), params):
            assert rel_err(ours.asnumpy(), p.grad.numpy()) < 1e-6


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kernel", [True, False])
def test_adamw_equals_torch(rng, jit, kernel):
    """Five steps of our AdamW and torch.optim.AdamW on the same gradients,
    the fourth skipped (update False) on our side and not taken on torch's;
    with the CPU kernel (over the kernel's chunks and threads: 40000 values)
    and with MindSpore's ops."""
    import torch
    from tuneavideo_ms.optim import AdamW
    values = rng.standard_normal((2, 4, 5000)).astype(np.float32)
    ours = ms.Parameter(ms.Tensor(values), name="w")
    theirs = torch.nn.Parameter(torch.from_numpy(values.copy()))
    optimizer = AdamW([ours], weight_decay=0.05)
    assert (optimizer.kernel is not None) == (runtime.device() == "CPU")
    if not kernel:
        optimizer.kernel = None
    reference = torch.optim.AdamW([theirs], lr=0.1, weight_decay=0.05)

    def step(grad, lr, update):
        return optimizer((grad,), lr, update)
    step = ms.jit(step) if jit else step
    for k in range(5):
        grad = rng.standard_normal(values.shape).astype(np.float32) * 10 ** (k - 2)
        step(ms.Tensor(grad), ms.Tensor(0.1, ms.float32), ms.Tensor(k != 3))
        if k != 3:
            theirs.grad = torch.from_numpy(grad)
            reference.step()
        assert rel_err(ours.asnumpy(), theirs.detach().numpy()) < 1e-6, k
    moments = reference.state[theirs]
    assert rel_err(optimizer.exp_avg_sq[0].asnumpy(), moments["exp_avg_sq"].numpy()) < 1e-6
    assert int(optimizer.step.asnumpy()) == 4


def test_gradient_accumulation_equals_the_larger_batch(rng):
    """Two micro-batches of one sample take the same AdamW step as one batch of two."""
    from mindspore import nn
    from tuneavideo_ms.optim import AdamW

    class Toy(nn.Cell):
        def __init__(self):
            super().__init__()
            ramp = np.linspace(0.5, 1.5, 4, dtype=np.float32).reshape(1, 4, 1, 1, 1)
            self.weight = ms.Parameter(ms.Tensor(ramp), name="weight")

        def construct(self, x, t, context):
            return x * self.weight + context.mean() + t.reshape(-1, 1, 1, 1, 1) * 1e-3

    inputs = [rng.standard_normal((2, 4, 2, 2, 2)).astype(np.float32) for _ in range(2)]
    alpha = np.array([0.3, 0.8], np.float32).reshape(2, 1, 1, 1, 1)
    mean, std = (ms.Tensor(rng.standard_normal((1, 4, 2, 2, 2)).astype(np.float32)) for _ in range(2))
    context = ms.Tensor(rng.standard_normal((1, 3, 5)).astype(np.float32))
    results = []
    for micro in (1, 2):
        toy = Toy()
        step = training.TrainStep(toy, [toy.weight], AdamW([toy.weight]), "v_prediction", 0.18, 1.0)
        shape = lambda a: ms.Tensor(a.reshape((micro, 2 // micro) + a.shape[1:]))  # noqa: E731
        loss, finite = step(mean, std, shape(inputs[0]), shape(inputs[1]), shape(alpha ** 0.5),
                                 shape((1 - alpha) ** 0.5), shape(np.array([[3.0], [700.0]], np.float32)),
                                 context, ms.Tensor(1.0, ms.float32), ms.Tensor(0.1, ms.float32))
        assert bool(finite.asnumpy())
        results.append((float(loss.asnumpy()), toy.weight.asnumpy()))
    assert abs(results[0][0] - results[1][0]) < 1e-6
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-7)
