"""Inversion: run a deterministic sampler backwards, from a clean video latent
up to the noise that sampling turns back into it. DDIM's is the original's
loop; DPM-Solver++'s is mindone's inverse scheduler."""
import logging
from typing import List, Union

import mindspore as ms
import numpy as np
from mindspore import ops
from tqdm.auto import tqdm

from .pipelines import TuneAVideoPipeline, as_tensor
from .sampling import INVERSES, PAIRED, mindone_scheduler, noise_schedule, steps
from .schedulers import DDIMScheduler

logger = logging.getLogger(__name__)


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


def _context(pipeline, prompt, latent):
    return ops.repeat_interleave(pipeline.encode_prompt(prompt), latent.shape[0], 0)


def ddim_inversion(pipeline: TuneAVideoPipeline, scheduler: DDIMScheduler,
                   video_latent: Union[np.ndarray, ms.Tensor], num_inv_steps: int,
                   prompt: str = "") -> List[ms.Tensor]:
    """Returns num_inv_steps + 1 latents, from `video_latent` to the inverted
    noise (the last). The prompt's embedding conditions the UNet; no guidance."""
    if scheduler.num_inference_steps != num_inv_steps:
        scheduler.set_timesteps(num_inv_steps)
    latent = as_tensor(video_latent)
    context = _context(pipeline, prompt, latent)
    all_latents = [latent]
    for i in tqdm(range(num_inv_steps), desc="DDIM inversion"):
        t = int(scheduler.timesteps[len(scheduler.timesteps) - i - 1])
        noise_pred = pipeline.denoise(latent, t, context)
        latent = next_step(noise_pred, t, latent, scheduler)
        all_latents.append(latent)
    return all_latents


def scheduler_inversion(pipeline: TuneAVideoPipeline, inverse, video_latent: Union[np.ndarray, ms.Tensor],
                        num_inv_steps: int, prompt: str = "") -> List[ms.Tensor]:
    """ddim_inversion's result with an inverse scheduler of diffusers' interface (e.g. mindone's
    DPMSolverMultistepInverseScheduler), which runs from the clean latent up to the noise as a sampler runs
    down."""
    latent = as_tensor(video_latent)
    context = _context(pipeline, prompt, latent)
    inverse.set_timesteps(num_inv_steps)
    desc = type(inverse).__name__.replace("Scheduler", "")
    return [latent] + list(steps(lambda x, t: pipeline.denoise(x, t, context), inverse, latent, desc=desc))


def invert(pipeline: TuneAVideoPipeline, video_latent: Union[np.ndarray, ms.Tensor], num_inv_steps: int,
           prompt: str = "") -> List[ms.Tensor]:
    """The inversion that matches pipeline.scheduler, the sampler that will start from its noise: DPM-Solver++
    inverts with its inverse, DDIM and every other sampler with DDIM (the original's loop). Returns
    num_inv_steps + 1 latents, from `video_latent` to the inverted noise (the last)."""
    sampler = type(pipeline.scheduler).__name__
    if sampler in INVERSES:
        paired = PAIRED.get(sampler, {})
        if any(pipeline.scheduler.config.get(k) != v for k, v in paired.items()):
            logger.warning("%s samples its inverse's noise back to the clip only with %s (as "
                           "sampling.make_scheduler builds it)", sampler,
                           ", ".join(f"{k}={v!r}" for k, v in paired.items()))
        inverse = mindone_scheduler(INVERSES[sampler]).from_config(noise_schedule(pipeline.scheduler))
        return scheduler_inversion(pipeline, inverse, video_latent, num_inv_steps, prompt)
    if not isinstance(pipeline.scheduler, DDIMScheduler):
        logger.warning("%s has no inverse: the clip is inverted with DDIM, and sampling that noise with "
                       "another sampler may lose the clip's motion (DDIM and DPM-Solver++ invert exactly)",
                       sampler)
    scheduler = DDIMScheduler.from_config(noise_schedule(pipeline.scheduler))
    return ddim_inversion(pipeline, scheduler, video_latent, num_inv_steps, prompt)
