"""Editing a clip: invert it once, then sample any number of prompts from the
inverted noise and write each as GIF and MP4, plus a grid of all of them."""
import hashlib
import json
import logging
import os
import re

import numpy as np

from .atomic import atomic_file
from .inversion import invert
from .video_io import save_video, save_videos_grid, to_uint8_frames

logger = logging.getLogger(__name__)


def invert_clip(pipe, latents, num_inv_steps, prompt="", save_path=None):
    """The clip's scaled latents [1, 4, f, h, w] -> its inverted noise, same
    shape (a numpy array, also written to `save_path` when given), by the
    inversion that matches the pipeline's sampler (inversion.invert)."""
    noise = invert(pipe, latents, num_inv_steps, prompt=prompt)[-1].asnumpy()
    if save_path:
        with atomic_file(save_path) as tmp, open(tmp, "wb") as f:
            np.save(f, noise)
        logger.info("inverted latents written to %s", save_path)
    return noise


NAME_BYTES = 120  # a stem this long leaves room for any extension under the usual 255-byte name limit


def _digest(prompt):
    return hashlib.sha1(prompt.encode()).hexdigest()[:8]


def prompt_filenames(prompts):
    """A distinct, safe file stem per prompt: the prompt itself where it can be
    (path separators and control characters replaced, surrounding spaces and
    leading dots dropped, at most NAME_BYTES bytes), with a short hash of the
    prompt where it was shortened or where another prompt gives the same stem."""
    stems = []
    for prompt in prompts:
        stem = re.sub(r"[/\\\x00-\x1f]", "_", prompt).strip().lstrip(".") or "empty-prompt"
        encoded = stem.encode()
        if len(encoded) > NAME_BYTES:
            stem = encoded[:NAME_BYTES - 9].decode(errors="ignore").rstrip() + "-" + _digest(prompt)
        stems.append(stem)
    counts = {stem: stems.count(stem) for stem in stems}
    taken = set()
    for i, (prompt, stem) in enumerate(zip(prompts, stems)):
        if counts[stem] > 1:
            stem = f"{stem}-{_digest(prompt)}"
        while stem in taken:  # the same prompt twice
            stem = f"{stem}-{i}"
        taken.add(stem)
        stems[i] = stem
    return stems


def sample_edits(pipe, prompts, output_dir, latents=None, formats=("gif", "mp4"), fps=8, grid_path=None,
                 evaluate=None, **sampling):
    """Samples each prompt (from `latents`, the inverted noise, when given) and
    writes output_dir/<prompt>.<format> (named by prompt_filenames), a grid of
    all prompts (by default output_dir/grid.gif) and prompts.json (file stem ->
    prompt). With `evaluate` (a metrics.VideoEvaluator), each video's scores go
    to the log and to output_dir/metrics.json. Returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    stems = prompt_filenames(prompts)
    with atomic_file(os.path.join(output_dir, "prompts.json")) as tmp, open(tmp, "w") as f:
        json.dump(dict(zip(stems, prompts)), f, indent=2, ensure_ascii=False)
    videos, paths = [], []
    for prompt, stem in zip(prompts, stems):
        video = pipe(prompt, latents=latents, **sampling).videos
        videos.append(video[0])
        for fmt in formats:
            paths.append(save_video(video[0], os.path.join(output_dir, f"{stem}.{fmt}"), fps))
    grid_path = grid_path or os.path.join(output_dir, "grid.gif")
    paths.append(save_videos_grid(np.stack(videos), grid_path, n_rows=1, fps=fps))
    for path in paths:
        logger.info("wrote %s", path)
    if evaluate is not None:
        paths.append(score_edits(evaluate, videos, prompts, stems, os.path.join(output_dir, "metrics.json")))
    return paths


def score_edits(evaluate, videos, prompts, stems, path):
    """Scores each video [3, f, H, W] for its prompt; logs the scores and writes them to `path` as
    `python -m tuneavideo_ms.evaluate --outputs` does: {"videos": [{video, prompt, scores...}], "mean"}."""
    from .metrics import format_scores, mean_scores
    rows = []
    for video, prompt, stem in zip(videos, prompts, stems):
        rows.append(dict(video=stem, prompt=prompt, **evaluate(to_uint8_frames(video), prompt)))
        logger.info("%s: %s", prompt, format_scores(rows[-1]))
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump({"videos": rows, "mean": mean_scores(rows)}, f, indent=2, ensure_ascii=False)
    return path
