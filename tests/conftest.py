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


@pytest.fixture
def rng():
    return np.random.default_rng(0)
