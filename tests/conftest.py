import os

import numpy as np
import pytest

from tuneavideo_ms import backend


def pytest_configure(config):
    # One forward of the tiny UNet takes seconds in PyNative and a compile of
    # about 20 s in graph mode; most tests run one forward, so PyNative.
    backend.setup("CPU", "pynative")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    # graphs the tests compile go to the session's temporary folder, not the user's cache
    os.environ["TUNEAVIDEO_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("graphs"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_CLIP = os.path.join(REPO, "tuneavideo_ms", "assets", "man-skiing.mp4")  # 16 frames, 128x128


def shared_clip(name):
    """A real clip from shared/videos (beside the checkout, or where
    TUNEAVIDEO_SHARED_VIDEOS points); the bundled cut of man-skiing where a
    checkout has no shared/ beside it."""
    for folder in (os.environ.get("TUNEAVIDEO_SHARED_VIDEOS"), os.path.join(REPO, "..", "shared", "videos"),
                   "/work/shared/videos"):
        if folder and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return BUNDLED_CLIP
