"""Editing a clip: invert it once, then sample any number of prompts from the
inverted noise and write each as GIF and MP4, plus a grid of all of them."""
import logging
import os

import numpy as np

from .atomic import atomic_file
from .inversion import ddim_inversion
from .schedulers import DDIMScheduler
from .video_io import save_video, save_videos_grid

logger = logging.getLogger(__name__)


def invert_clip(pipe, latents, num_inv_steps, prompt="", save_path=None):
    """The clip's scaled latents [1, 4, f, h, w] -> its inverted noise, same
    shape (a numpy array, also written to `save_path` when given)."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    noise = ddim_inversion(pipe, scheduler, latents, num_inv_steps, prompt=prompt)[-1].asnumpy()
    if save_path:
        with atomic_file(save_path) as tmp, open(tmp, "wb") as f:
            np.save(f, noise)
        logger.info("inverted latents written to %s", save_path)
    return noise


def prompt_filename(prompt):
    return prompt.replace(os.sep, "_").strip() or "empty-prompt"


def sample_edits(pipe, prompts, output_dir, latents=None, formats=("gif", "mp4"), fps=8, grid_path=None,
                 **sampling):
    """Samples each prompt (from `latents`, the inverted noise, when given) and
    writes output_dir/<prompt>.<format> and a grid of all prompts (by default
    output_dir/grid.gif). Returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    videos, paths = [], []
    for prompt in prompts:
        video = pipe(prompt, latents=latents, **sampling).videos
        videos.append(video[0])
        for fmt in formats:
            paths.append(save_video(video[0], os.path.join(output_dir, f"{prompt_filename(prompt)}.{fmt}"), fps))
    grid_path = grid_path or os.path.join(output_dir, "grid.gif")
    paths.append(save_videos_grid(np.stack(videos), grid_path, n_rows=1, fps=fps))
    for path in paths:
        logger.info("wrote %s", path)
    return paths
