"""The training clip: frames read from a video file or a folder of images,
sampled, resized and scaled to [-1, 1]."""
import os

import cv2
import imageio.v2 as imageio
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _frame_files(folder):
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{folder}: no image frames ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return [os.path.join(folder, f) for f in files]


def _read_image(path):
    try:
        return imageio.imread(path)
    except Exception as e:  # noqa: BLE001 - imageio names a missing plugin for any file it cannot decode
        raise ValueError(f"{path}: cannot read this image, a frame of the clip (corrupt or not an image: "
                         f"{type(e).__name__})") from None


def _iter_frames(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"video not found: {path}")
    if os.path.isdir(path):
        yield from (_read_image(f) for f in _frame_files(path))
        return
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        raise ValueError(f"{path}: unsupported video type "
                         f"(use {', '.join(VIDEO_EXTENSIONS)} or a folder of frames)")
    try:
        with imageio.get_reader(path) as reader:
            yield from reader
    except (OSError, RuntimeError, ValueError, IndexError) as e:
        raise ValueError(f"{path}: cannot read this video ({type(e).__name__}: {e})") from None


def _read_frames(path, indices):
    """The frames at `indices` (sorted), decoding no further than the last one."""
    wanted, picked, count = set(indices), {}, 0
    for i, frame in enumerate(_iter_frames(path)):
        count = i + 1
        if i in wanted:
            picked[i] = frame
        if i >= indices[-1]:
            return [picked[j] for j in indices]
    raise ValueError(f"{path} has {count} frames; {len(indices)} frames from index {indices[0]} every "
                     f"{indices[1] - indices[0] if len(indices) > 1 else 1} need {indices[-1] + 1}")


def read_frames(path):
    """Every frame of a video file or a folder of images, as RGB uint8 arrays [height, width, 3]."""
    return [_rgb(frame) for frame in _iter_frames(path)]


def _rgb(frame):
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.stack([frame] * 3, -1)
    return frame[..., :3]


def _resize(frame, width, height, crop):
    if crop == "center":
        h, w = frame.shape[:2]
        scale = max(width / w, height / h)
        frame = cv2.resize(frame, (max(width, round(w * scale)), max(height, round(h * scale))),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        top, left = (frame.shape[0] - height) // 2, (frame.shape[1] - width) // 2
        return frame[top:top + height, left:left + width]
    if crop is not None:
        raise ValueError(f"crop must be 'center' or None, not {crop!r}")
    scale = min(width / frame.shape[1], height / frame.shape[0])
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def check_frame_size(height, width, multiple=8):
    """Refuses a frame size that is not a positive multiple of `multiple` (the
    VAE's downsampling), naming the nearest sizes that work."""
    problems = []
    for name, value in (("height", height), ("width", width)):
        if value < multiple or value % multiple:
            below, above = max(value // multiple, 1) * multiple, (value // multiple + 1) * multiple
            nearest = f"{below} or {above}" if below < value else f"{above}"
            problems.append(f"{name} {value} (nearest that work: {nearest})")
    if problems:
        raise ValueError(f"height and width must be multiples of {multiple}: " + "; ".join(problems))


def read_video(video_path, n_sample_frames=8, width=512, height=512, sample_start_idx=0, sample_frame_rate=1,
               crop=None):
    """Returns float32 pixels [3, n_sample_frames, height, width] in [-1, 1], the clip layout the
    pipeline encodes: frames sample_start_idx, + sample_frame_rate, ... of the clip."""
    check_frame_size(height, width)
    if n_sample_frames < 1 or sample_frame_rate < 1 or sample_start_idx < 0:
        raise ValueError("n_sample_frames and sample_frame_rate must be positive and sample_start_idx >= 0")
    picked = _read_frames(video_path,
                          [sample_start_idx + i * sample_frame_rate for i in range(n_sample_frames)])
    video = np.stack([_resize(_rgb(f), width, height, crop) for f in picked])
    return video.transpose(3, 0, 1, 2).astype(np.float32) / 127.5 - 1.0
