"""DDIM (Song et al. 2020) as diffusers' DDIMScheduler, for epsilon and
v-prediction models. Coefficients are Python floats, so `step` works on
MindSpore tensors and numpy arrays alike.

Kept beside mindone's DDIMScheduler, which gives the same numbers to the bit
(measured): training reads this noise schedule as numpy arrays for the
training graph's inputs, the original's inversion loop is written on it, its
step measured about three times faster than mindone's (whose coefficients are
MindSpore ops, one launch each), and runs that sample with DDIM (the demo, the
default) do not import mindone."""
import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .models.modeling import build_config, model_folder, read_config

logger = logging.getLogger(__name__)

DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                prediction_type="epsilon", clip_sample_range=1.0, timestep_spacing="leading",
                rescale_betas_zero_snr=False, thresholding=False)
# fields of newer DDIM configs for what this DDIM refuses anyway (thresholding is for pixel-space models)
IGNORED = ("dynamic_thresholding_ratio", "sample_max_value")
# What the original's DDIMScheduler (diffusers 0.11.1) reads from another scheduler's config (SD 1.x ships
# PNDM's, SD 2 base Euler's): that class's other fields, timestep_spacing included, do not apply to DDIM.
ORIGINAL_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                   "clip_sample", "set_alpha_to_one", "steps_offset", "prediction_type")


@dataclass
class DDIMSchedulerOutput:
    prev_sample: object
    pred_original_sample: object


def _betas(c):
    n = c["num_train_timesteps"]
    if c["trained_betas"] is not None:
        return np.asarray(c["trained_betas"], np.float32)
    if c["beta_schedule"] == "linear":
        return np.linspace(c["beta_start"], c["beta_end"], n, dtype=np.float32)
    if c["beta_schedule"] == "scaled_linear":
        return np.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n, dtype=np.float32) ** 2
    if c["beta_schedule"] == "squaredcos_cap_v2":
        alpha_bar = [math.cos((t / n + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(n + 1)]
        return np.array([min(1 - alpha_bar[i + 1] / alpha_bar[i], 0.999) for i in range(n)], np.float32)
    raise ValueError(f"unsupported beta_schedule {c['beta_schedule']!r}")


def _rescale_zero_terminal_snr(betas):
    alphas_bar_sqrt = np.cumprod(1.0 - betas) ** 0.5
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1 - alphas).astype(np.float32)


def noisy_sample(sample, noise, sqrt_alpha, sqrt_one_minus_alpha):
    """x_t = sqrt(alpha_t) x0 + sqrt(1 - alpha_t) noise (numpy arrays, or tensors inside a graph)."""
    return sqrt_alpha * sample + sqrt_one_minus_alpha * noise


def velocity(sample, noise, sqrt_alpha, sqrt_one_minus_alpha):
    """The v-prediction target, sqrt(alpha_t) noise - sqrt(1 - alpha_t) x0."""
    return sqrt_alpha * noise - sqrt_one_minus_alpha * sample


class DDIMScheduler:
    def __init__(self, **config):
        kind = config.get("_class_name", "DDIMScheduler")
        if kind != "DDIMScheduler":
            logger.info("DDIM takes the noise schedule of a %s config", kind)
            config = {k: v for k, v in config.items() if k in ORIGINAL_FIELDS}
        c = build_config("DDIM scheduler", DEFAULTS, config, IGNORED)
        if c["prediction_type"] not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {c['prediction_type']!r} "
                             "(epsilon, v_prediction or sample)")
        if c["thresholding"]:
            raise ValueError("dynamic thresholding is not supported (it is for pixel-space models)")
        self.config = c
        betas = _betas(c)
        if c["rescale_betas_zero_snr"]:
            betas = _rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
        self.final_alpha_cumprod = 1.0 if c["set_alpha_to_one"] else float(self.alphas_cumprod[0])
        self.num_inference_steps = None
        self.timesteps = np.arange(c["num_train_timesteps"])[::-1].astype(np.int64)
        self.init_noise_sigma = 1.0  # diffusers' interface: DDIM samples from unit-variance noise, unscaled

    @classmethod
    def from_config(cls, config):
        return cls(**dict(config))

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str, subfolder: Optional[str] = None) -> "DDIMScheduler":
        """A DDIM scheduler from a scheduler folder (or Hub id); another scheduler's config (PNDM, Euler,
        LMS, ...) gives its noise schedule, as in the original."""
        return cls(**read_config(model_folder(pretrained_model_path, subfolder), "scheduler_config.json"))

    def set_timesteps(self, num_inference_steps):
        n, c = num_inference_steps, self.config
        total = c["num_train_timesteps"]
        if not 0 < n <= total:
            raise ValueError(f"num_inference_steps must be in 1..{total}, got {n}")
        self.num_inference_steps = n
        if c["timestep_spacing"] == "leading":
            timesteps = (np.arange(0, n) * (total // n)).round()[::-1] + c["steps_offset"]
        elif c["timestep_spacing"] == "trailing":
            timesteps = np.round(np.arange(total, 0, -total / n)) - 1
        elif c["timestep_spacing"] == "linspace":
            timesteps = np.linspace(0, total - 1, n).round()[::-1]
        else:
            raise ValueError(f"unsupported timestep_spacing {c['timestep_spacing']!r}")
        self.timesteps = timesteps.astype(np.int64)

    def alpha_at(self, timestep):
        return float(self.alphas_cumprod[timestep]) if timestep >= 0 else self.final_alpha_cumprod

    def predicted_sample_and_noise(self, model_output, sample, timestep):
        """(predicted x0, predicted noise) from the model's output at `timestep`, whatever it predicts."""
        alpha = self.alpha_at(timestep)
        a, b = alpha ** 0.5, (1 - alpha) ** 0.5
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            return (sample - b * model_output) / a, model_output
        if kind == "sample":
            return model_output, (sample - a * model_output) / b
        return a * sample - b * model_output, a * model_output + b * sample

    def scale_model_input(self, sample, timestep=None):
        """diffusers' interface: DDIM gives the model the sample as it is."""
        return sample

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False,
             variance_noise=None, return_dict=True):
        timestep = int(timestep)
        prev_timestep = timestep - self.config["num_train_timesteps"] // self.num_inference_steps
        alpha_t, alpha_prev = self.alpha_at(timestep), self.alpha_at(prev_timestep)
        pred_x0, pred_eps = self.predicted_sample_and_noise(model_output, sample, timestep)
        if self.config["clip_sample"]:
            r = self.config["clip_sample_range"]
            pred_x0 = pred_x0.clip(-r, r)
            if use_clipped_model_output:
                pred_eps = (sample - alpha_t ** 0.5 * pred_x0) / (1 - alpha_t) ** 0.5
        variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
        std = eta * variance ** 0.5
        prev_sample = alpha_prev ** 0.5 * pred_x0 + (1 - alpha_prev - std ** 2) ** 0.5 * pred_eps
        if eta > 0:
            if variance_noise is None:
                raise ValueError("eta > 0 needs variance_noise")
            prev_sample = prev_sample + std * variance_noise
        if not return_dict:
            return prev_sample, pred_x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)

    def add_noise(self, original_samples, noise, timesteps):
        a = self._per_sample(timesteps, original_samples.ndim)
        return noisy_sample(original_samples, noise, a ** 0.5, (1 - a) ** 0.5)

    def get_velocity(self, sample, noise, timesteps):
        a = self._per_sample(timesteps, sample.ndim)
        return velocity(sample, noise, a ** 0.5, (1 - a) ** 0.5)

    def _per_sample(self, timesteps, ndim):
        a = self.alphas_cumprod[np.asarray(timesteps, np.int64).reshape(-1)]
        return a.reshape((-1,) + (1,) * (ndim - 1)).astype(np.float32)
