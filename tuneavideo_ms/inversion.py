"""DDIM inversion: run the deterministic sampler backwards, from a clean video
latent up to the noise that DDIM sampling turns back into it."""
from typing import List, Union

import mindspore as ms
import numpy as np
from mindspore import ops
from tqdm.auto import tqdm

from .pipelines import TuneAVideoPipeline, as_tensor
from .schedulers import DDIMScheduler


def next_step(model_output, timestep, sample, scheduler):
    """One inversion step from the level below `timestep` up to `timestep`
    (the original Tune-A-Video's next_step). The model output is first read as
    noise at the timestep the model was given, by the scheduler's
    prediction_type; the original reads every output as noise, which is wrong
    for v-prediction models."""
    ratio = scheduler.config["num_train_timesteps"] // scheduler.num_inference_steps
    current, target = min(timestep - ratio, scheduler.config["num_train_timesteps"] - 1), timestep
    _, eps = scheduler.predicted_sample_and_noise(model_output, sample, target)
    alpha, alpha_next = scheduler.alpha_at(current), scheduler.alpha_at(target)
    pred_x0 = (sample - (1 - alpha) ** 0.5 * eps) / alpha ** 0.5
    return alpha_next ** 0.5 * pred_x0 + (1 - alpha_next) ** 0.5 * eps


def ddim_inversion(pipeline: TuneAVideoPipeline, scheduler: DDIMScheduler,
                   video_latent: Union[np.ndarray, ms.Tensor], num_inv_steps: int,
                   prompt: str = "") -> List[ms.Tensor]:
    """Returns num_inv_steps + 1 latents, from `video_latent` to the inverted
    noise (the last). The prompt's embedding conditions the UNet; no guidance."""
    if scheduler.num_inference_steps != num_inv_steps:
        scheduler.set_timesteps(num_inv_steps)
    latent = as_tensor(video_latent)
    context = ops.repeat_interleave(pipeline.encode_prompt(prompt), latent.shape[0], 0)
    all_latents = [latent]
    for i in tqdm(range(num_inv_steps), desc="DDIM inversion"):
        t = int(scheduler.timesteps[len(scheduler.timesteps) - i - 1])
        noise_pred = pipeline.denoise(latent, t, context)
        latent = next_step(noise_pred, t, latent, scheduler)
        all_latents.append(latent)
    return all_latents
