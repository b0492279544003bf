"""DDIM inversion: the original's loop for epsilon models, and right for v-prediction."""
import mindspore as ms
import numpy as np
import pytest

from tuneavideo_ms.inversion import ddim_inversion
from tuneavideo_ms.schedulers import DDIMScheduler

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
          set_alpha_to_one=False, steps_offset=1)


class StandInPipeline:
    """What ddim_inversion needs of a pipeline, with `model(x, t)` as the UNet."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def encode_prompt(self, prompt):
        self.calls.append(prompt)
        return ms.Tensor(np.zeros((1, 1, 1), np.float32))

    def denoise(self, latents, timestep, context, guidance_scale=1.0):
        return ms.Tensor(self.model(latents.asnumpy().astype(np.float64), timestep).astype(np.float32))


def original_inversion(model, scheduler, latent, steps):
    """The original Tune-A-Video's ddim_loop + next_step, transcribed to numpy (epsilon only)."""
    ratio = scheduler.config["num_train_timesteps"] // steps
    all_latents = [latent]
    for i in range(steps):
        t = int(scheduler.timesteps[len(scheduler.timesteps) - i - 1])
        out = model(latent, t)
        timestep, next_timestep = min(t - ratio, 999), t
        alpha = scheduler.alphas_cumprod[timestep] if timestep >= 0 else scheduler.final_alpha_cumprod
        alpha_next = scheduler.alphas_cumprod[next_timestep]
        x0 = (latent - (1 - alpha) ** 0.5 * out) / alpha ** 0.5
        latent = alpha_next ** 0.5 * x0 + (1 - alpha_next) ** 0.5 * out
        all_latents.append(latent)
    return all_latents


def sample(model, scheduler, latent):
    for t in scheduler.timesteps:
        out = ms.Tensor(model(latent.asnumpy().astype(np.float64), int(t)).astype(np.float32))
        latent = scheduler.step(out, int(t), latent).prev_sample
    return latent.asnumpy()


def test_epsilon_inversion_equals_original_loop(rng):
    scheduler = DDIMScheduler(**SD)
    scheduler.set_timesteps(10)
    w = rng.standard_normal((4, 4)) * 0.3

    def model(x, t):  # any deterministic function of the latent and the timestep
        return np.einsum("ij,bjfhw->bifhw", w, x) * (1 + t / 1000)

    latent = rng.standard_normal((1, 4, 3, 8, 8))
    pipe = StandInPipeline(model)
    ours = ddim_inversion(pipe, scheduler, latent.astype(np.float32), 10, prompt="")
    expected = original_inversion(model, scheduler, latent, 10)
    assert len(ours) == 11 and pipe.calls == [""]
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a.asnumpy(), b, rtol=1e-5, atol=1e-5)


def oracle(kind, scheduler, noise):
    """A denoiser that knows the clip's noise: it predicts `noise` (epsilon), or
    the same prediction expressed as v at the timestep it is given."""
    def model(x, t):
        if kind == "epsilon":
            return np.broadcast_to(noise, x.shape)
        a = float(scheduler.alphas_cumprod[t])
        return (noise - (1 - a) ** 0.5 * x) / a ** 0.5
    return model


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_invert_then_sample_reconstructs_the_clip(rng, kind):
    scheduler = DDIMScheduler(**SD, prediction_type=kind)
    clean = rng.standard_normal((1, 4, 3, 8, 8))
    model = oracle(kind, scheduler, rng.standard_normal(clean.shape))
    inverted = ddim_inversion(StandInPipeline(model), scheduler, clean.astype(np.float32), 25)
    assert np.abs(inverted[-1].asnumpy() - clean).max() > 0.5  # it really is noise at the end
    reconstructed = sample(model, scheduler, inverted[-1])
    assert np.abs(reconstructed - clean).max() < 1e-4


def test_epsilon_only_inversion_fails_for_v_models(rng):
    """The original reads every output as noise; on a v-prediction model its
    inverted noise does not sample back to the clip."""
    scheduler = DDIMScheduler(**SD, prediction_type="v_prediction")
    scheduler.set_timesteps(25)
    clean = rng.standard_normal((1, 4, 3, 8, 8))
    model = oracle("v_prediction", scheduler, rng.standard_normal(clean.shape))
    inverted = original_inversion(model, scheduler, clean, 25)[-1]
    reconstructed = sample(model, scheduler, ms.Tensor(inverted.astype(np.float32)))
    assert np.abs(reconstructed - clean).max() > 0.1
