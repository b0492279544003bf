import os

import numpy as np
import pytest

from tuneavideo_ms import runtime


def pytest_configure(config):
    # One forward of the tiny UNet takes seconds in PyNative and a compile of
    # about 20 s in graph mode; most tests run one forward, so PyNative.
    runtime.setup("CPU", "pynative")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    # graphs the tests compile go to pytest's temporary folder, not the user's cache
    os.environ["TUNEAVIDEO_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("graphs"))


@pytest.fixture
def portable_kernels():
    """MindSpore's plain ops for the cells a test builds, then the fast kernels again."""
    mode = runtime.current().mode
    runtime.setup("CPU", mode, kernels="portable")
    yield
    runtime.setup("CPU", mode)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_CLIP = os.path.join(REPO, "tuneavideo_ms", "assets", "man-skiing.mp4")  # 16 frames, 128x128


DEMO_CONFIG = os.path.join(REPO, "tuneavideo_ms", "demo.yaml")
HUB_SD1 = os.path.join(REPO, "tests", "data", "hub-sd1")  # written by diffusers 0.11.1 (tests/data/README.md)
HUB_SD2 = os.path.join(REPO, "tests", "data", "hub-sd2")


def example_clip(name):
    """One of the real clips in the repository's data/."""
    return os.path.join(REPO, "data", name)
