"""DDIM against diffusers' DDIMScheduler."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler as TorchDDIM

from tuneavideo_ms.schedulers import DDIMScheduler

CONFIGS = [
    dict(),
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
         set_alpha_to_one=False, steps_offset=1),
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
         set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"),
    dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", prediction_type="v_prediction",
         rescale_betas_zero_snr=True),
    dict(timestep_spacing="linspace", prediction_type="sample", clip_sample_range=0.5),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_timesteps_and_steps_equal_diffusers(rng, config, steps):
    ours, ref = DDIMScheduler(**config), TorchDDIM(**config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert np.array_equal(ours.timesteps, ref.timesteps.numpy())
    sample = rng.standard_normal((1, 4, 2, 8, 8)).astype(np.float32)
    for eta in (0.0, 0.7):
        for t in ours.timesteps[:3]:
            out = rng.standard_normal(sample.shape).astype(np.float32)
            noise = rng.standard_normal(sample.shape).astype(np.float32)
            mine = ours.step(out, t, sample, eta=eta, variance_noise=noise)
            theirs = ref.step(torch.from_numpy(out), int(t), torch.from_numpy(sample), eta=eta,
                              variance_noise=torch.from_numpy(noise))
            np.testing.assert_allclose(mine.prev_sample, theirs.prev_sample.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(mine.pred_original_sample, theirs.pred_original_sample.numpy(),
                                       rtol=1e-5, atol=1e-5)


def test_add_noise_and_velocity_equal_diffusers(rng):
    ours, ref = DDIMScheduler(**CONFIGS[1]), TorchDDIM(**CONFIGS[1])
    x = rng.standard_normal((3, 4, 2, 4, 4)).astype(np.float32)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    t = np.array([0, 500, 999])
    tx, tn, tt = torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(t)
    np.testing.assert_allclose(ours.add_noise(x, noise, t), ref.add_noise(tx, tn, tt).numpy(), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(ours.get_velocity(x, noise, t), ref.get_velocity(tx, tn, tt).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_from_config_and_pretrained(tmp_path):
    ref = TorchDDIM(**CONFIGS[2])
    ref.save_pretrained(tmp_path)
    loaded = DDIMScheduler.from_pretrained(str(tmp_path))
    assert loaded.config["prediction_type"] == "v_prediction"
    assert DDIMScheduler.from_config(loaded.config).config == loaded.config
    # Stable Diffusion ships a PNDM config; DDIM reads it as the original does
    DDIMScheduler(_class_name="PNDMScheduler", skip_prk_steps=True, **CONFIGS[1])
    # of another class's config DDIM takes only what diffusers 0.11.1's DDIM knew: Euler's spacing is Euler's
    euler = DDIMScheduler.from_config(dict(CONFIGS[1], _class_name="EulerDiscreteScheduler",
                                           timestep_spacing="linspace", interpolation_type="linear"))
    assert euler.config["timestep_spacing"] == "leading" and euler.config["steps_offset"] == 1
    with pytest.raises(ValueError, match="unsupported prediction_type"):
        DDIMScheduler(prediction_type="flow")
