"""Saving videos as GIF / MP4 and grids of videos, atomically."""
import os

import imageio.v2 as imageio
import numpy as np

from .atomic import atomic_file

_FORMATS = {".gif": "GIF", ".mp4": "FFMPEG"}


def to_uint8_frames(video):
    """[3, f, H, W] floats in [0, 1] -> [f, H, W, 3] uint8."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"a video is [3, frames, height, width], got {video.shape}")
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 3, 0)


def save_video(video, path, fps=8):
    """Writes one video [3, f, H, W] in [0, 1] to a .gif or .mp4 file."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"{path}: unsupported video format {ext!r} (use .gif or .mp4)")
    frames = to_uint8_frames(video)
    with atomic_file(path) as tmp:
        if ext == ".gif":
            imageio.mimsave(tmp, list(frames), format="GIF", duration=1000 / fps, loop=0)
        else:
            with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                                    pixelformat="yuv420p") as writer:
                for frame in frames:
                    writer.append_data(frame)
    return path


def video_grid(videos, n_rows=None):
    """[b, 3, f, H, W] -> one video [3, f, rows*H, cols*W] with the videos tiled."""
    videos = np.asarray(videos)
    b, c, f, h, w = videos.shape
    n_rows = n_rows or int(np.ceil(np.sqrt(b)))
    n_cols = int(np.ceil(b / n_rows))
    grid = np.zeros((c, f, n_rows * h, n_cols * w), videos.dtype)
    for i in range(b):
        r, col = divmod(i, n_cols)
        grid[:, :, r * h:(r + 1) * h, col * w:(col + 1) * w] = videos[i]
    return grid


def save_videos_grid(videos, path, n_rows=None, fps=8):
    return save_video(video_grid(videos, n_rows), path, fps)
