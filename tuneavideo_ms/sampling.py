"""The samplers an edit can use, and the loop that runs any of them.

DDIM is this project's (schedulers.py): the original's sampler, and the noise schedule training reads.
DPM-Solver++ and Euler are mindone.diffusers' schedulers, imported only when one is asked for. Any
scheduler with diffusers' interface drives the pipeline (set_timesteps, timesteps, init_noise_sigma,
scale_model_input, step(...).prev_sample), so `pipe.scheduler = DPMSolverMultistepScheduler.from_config(
pipe.scheduler.config)` works as in diffusers. The UNet stays one graph for every step and sampler: the
timestep is a tensor input.
"""
import inspect

import numpy as np
from tqdm.auto import tqdm

# Not UniPC: mindone 0.5.0's UniPCMultistepScheduler stacks its coefficients with mint.stack, whose kernel
# MindSpore 2.10 does not register on CPU ("The kernel StackExt unregistered"), so it cannot run everywhere.
SAMPLERS = {"ddim": "DDIMScheduler", "dpmsolver++": "DPMSolverMultistepScheduler",
            "euler": "EulerDiscreteScheduler"}
# the samplers (by class) that have an inverse in mindone.diffusers; the others invert with DDIM
INVERSES = {"DPMSolverMultistepScheduler": "DPMSolverMultistepInverseScheduler"}


def mindone_scheduler(name):
    """mindone.diffusers' scheduler class `name`; imported here, so that runs sampling with DDIM (the demo,
    the default) do not pay for mindone's imports."""
    import mindone.diffusers
    return getattr(mindone.diffusers, name)


def noise_schedule(scheduler):
    """`scheduler`'s config, named by its class: what from_config needs to build another sampler on the same
    noise schedule (DDIM keeps only the fields the original's DDIM reads from another scheduler's config)."""
    return dict(scheduler.config, _class_name=type(scheduler).__name__)


# What a sampler needs to sample its inverse's noise back to the clip. DPM-Solver++'s inverse starts from the
# clip as the sample at the least noisy level (t = 0) and ends at the noisiest (t = 999): the sampler must
# start there, which only the "linspace" spacing does (SD's "leading" starts at t = 901), and end at t = 0's
# level (sigma_min), not at sigma 0. DDIM is consistent in the same way when set_alpha_to_one is false.
# Keyed by class, as INVERSES is.
PAIRED = {"DPMSolverMultistepScheduler": dict(timestep_spacing="linspace", final_sigmas_type="sigma_min")}


def make_scheduler(name, like):
    """The sampler `name` (a key of SAMPLERS) on the noise schedule of the scheduler `like`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: use {', '.join(SAMPLERS)}")
    config = dict(noise_schedule(like), **PAIRED.get(SAMPLERS[name], {}))
    if name == "ddim":
        # imported here, as MindSpore is: command lines list SAMPLERS in their --help without loading it
        from .schedulers import DDIMScheduler
        return DDIMScheduler.from_config(config)
    return mindone_scheduler(SAMPLERS[name]).from_config(config)


def steps(denoise, scheduler, latents, eta=0.0, rng=None, desc=None):
    """Runs `scheduler` (set_timesteps already called) from `latents`, yielding the latents after each step;
    denoise(latents, timestep) is the model output at `timestep` (a float). `eta` > 0 (DDIM's stochastic
    sampling) draws its noise from `rng`; `desc` names the progress bar (by default the scheduler)."""
    from mindspore import Tensor
    extra = {}
    if eta > 0 and "eta" not in inspect.signature(scheduler.step).parameters:
        raise ValueError(f"eta is DDIM's; {type(scheduler).__name__} samples without it")
    desc = desc or type(scheduler).__name__.replace("Scheduler", " sampling")
    for t in tqdm(scheduler.timesteps, desc=desc):
        output = denoise(scheduler.scale_model_input(latents, t), float(t))
        if eta > 0:
            noise = rng.standard_normal(tuple(latents.shape)).astype(np.float32)
            extra = dict(eta=eta, variance_noise=Tensor(noise))
        latents = scheduler.step(output, t, latents, return_dict=True, **extra).prev_sample
        yield latents


def sample(denoise, scheduler, latents, num_inference_steps, eta=0.0, rng=None):
    """The latents `scheduler` samples in num_inference_steps from the noise `latents` (see steps)."""
    scheduler.set_timesteps(num_inference_steps)
    latents = latents * scheduler.init_noise_sigma
    for latents in steps(denoise, scheduler, latents, eta, rng):
        pass
    return latents
