"""The clip reader on real footage (the bundled 16-frame, 128x128 cut of
man-skiing, present in every checkout), in each container, and its errors."""
import imageio.v2 as imageio
import numpy as np
import pytest

from tuneavideo_ms.data import read_video
from tuneavideo_ms.video_io import save_video

from conftest import BUNDLED_CLIP as CLIP


@pytest.fixture(scope="module")
def frames():
    with imageio.get_reader(CLIP) as reader:
        return np.stack([frame for _, frame in zip(range(12), reader)])


def test_mp4_start_stride_and_non_square_size():
    video = read_video(CLIP, n_sample_frames=3, width=64, height=48, sample_start_idx=2, sample_frame_rate=4)
    assert video.shape == (3, 3, 48, 64) and video.dtype == np.float32
    assert -1 <= video.min() < 0 < video.max() <= 1
    # frames 2, 6 and 10, in order
    each = [read_video(CLIP, 1, 64, 48, sample_start_idx=i) for i in (2, 6, 10)]
    assert np.array_equal(video, np.concatenate(each, axis=1))


def test_gif_and_frame_folder_give_the_clip(tmp_path, frames):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        imageio.imwrite(folder / f"{i:04d}.png", frame)
    # not an image name: ignored
    imageio.imwrite(folder / "notes.txt", np.zeros((1, 1), np.uint8), format="PNG")
    gif = tmp_path / "clip.gif"
    save_video(frames.transpose(3, 0, 1, 2) / 255.0, str(gif))
    from_folder = read_video(str(folder), 4, 64, 64, 1, 3)
    from_mp4 = read_video(CLIP, 4, 64, 64, 1, 3)
    from_gif = read_video(str(gif), 4, 64, 64, 1, 3)
    assert from_folder.shape == from_gif.shape == (3, 4, 64, 64)
    assert np.abs(from_folder - from_mp4).max() < 1e-6
    assert np.abs(from_gif - from_mp4).mean() < 0.05  # GIF quantises colours


def test_center_crop_keeps_the_aspect_ratio():
    video = read_video(CLIP, 1, width=64, height=32, crop="center")
    squashed = read_video(CLIP, 1, width=64, height=32)
    assert video.shape == squashed.shape == (3, 1, 32, 64) and not np.array_equal(video, squashed)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found"):
        read_video(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot read this video"):
        read_video(str(bad), 1, 64, 64)
    with pytest.raises(ValueError, match=r"has 16 frames; 30 frames from index 5 every 3 need 93"):
        read_video(CLIP, n_sample_frames=30, width=64, height=64, sample_start_idx=5, sample_frame_rate=3)
    with pytest.raises(ValueError, match=r"multiples of 8: width 60 \(nearest that work: 56 or 64\)"):
        read_video(CLIP, 2, width=60, height=64)
    with pytest.raises(ValueError, match="unsupported video type"):
        read_video(__file__, 2, 64, 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        read_video(str(tmp_path / "empty"), 1, 64, 64)
    (tmp_path / "empty" / "000.png").write_bytes(b"\x89PNG corrupt")
    with pytest.raises(ValueError, match=r"000.png: cannot read this image, a frame of the clip \(corrupt"):
        read_video(str(tmp_path / "empty"), 1, 64, 64)
