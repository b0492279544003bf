"""The device a process runs on, its execution mode and its kernels: set up once, asked everywhere.

setup() chooses; models need not call it: the first model cell built sets up with the defaults (the
first available device, MindSpore's current mode, the fast kernels), as diffusers needs no set-up.
"""
import contextlib
import dataclasses
import logging
import os
from typing import Optional

import mindspore as ms

from tuneavideo_ms.runtime import transpose
from tuneavideo_ms.runtime.kernels import Kernels

logger = logging.getLogger(__name__)

DEVICES = ("Ascend", "GPU", "CPU")
MODES = ("graph", "pynative")


@dataclasses.dataclass(frozen=True)
class Runtime:
    device: str    # Ascend, GPU or CPU
    mode: str      # graph or pynative
    kernels: Kernels


_current: Optional[Runtime] = None  # only setup() sets it


def setup(device: Optional[str] = None, mode: Optional[str] = None, kernels: Optional[str] = None) -> str:
    """Pick the device (Ascend, then GPU, then CPU, unless `device` or TUNEAVIDEO_DEVICE says otherwise),
    the execution mode ("graph" or "pynative"; None keeps MindSpore's) and the kernels ("auto" or
    "portable", also from TUNEAVIDEO_KERNELS). Cells take their kernels when built, so set up before
    building models. Returns the device."""
    global _current
    requested = device or os.environ.get("TUNEAVIDEO_DEVICE") or _detect_device()
    device = {d.lower(): d for d in DEVICES}.get(requested.lower())
    if device is None:
        raise ValueError(f"unknown device {requested!r}; choose one of {', '.join(DEVICES)}")
    if mode is None:
        mode = "graph" if ms.get_context("mode") == ms.GRAPH_MODE else "pynative"
    if mode not in MODES:
        raise ValueError(f"mode must be 'graph' or 'pynative', not {mode!r}")
    choice = kernels or os.environ.get("TUNEAVIDEO_KERNELS", "auto")
    if device == "CPU":
        # MindSpore's host pipeline waits for a graph run in a loop that never yields: a core lost for
        # the whole run when the host is the device
        os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
    ms.set_device(device, device_id(device))
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    registry = Kernels.build(device, choice)
    transpose.use(registry.library)
    _current = Runtime(device, mode, registry)
    logger.info("runtime: device=%s mode=%s kernels=%s", device, mode, choice)
    return device


def current() -> Runtime:
    """The runtime in use, set up with the defaults if nothing has set it up yet."""
    if _current is None:
        setup()
    return _current


@contextlib.contextmanager
def using(registry: Kernels):
    """Models built inside take `registry`'s kernels (the self-check builds a device's fast kernels and
    the portable ones side by side; tests build Ascend's on CPU). The runtime's own comes back after."""
    global _current
    saved = current()
    _current = dataclasses.replace(saved, kernels=registry)
    transpose.use(registry.library)
    try:
        yield registry
    finally:
        _current = saved
        transpose.use(saved.kernels.library)


def kernels() -> Kernels:
    """The kernel registry model cells build with."""
    return current().kernels


def device() -> str:
    """The device in use."""
    return current().device


def device_id(device: str) -> Optional[int]:
    """The card this process runs on: msrun sets its own workers' cards; a launcher running one job per
    card says which in DEVICE_ID (tools/launch_edit.sh does); else None, MindSpore's default (card 0)."""
    value = os.environ.get("DEVICE_ID")
    if device == "CPU" or "MS_ROLE" in os.environ or value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"DEVICE_ID must be a card number such as 0, not {value!r}")
    return int(value)


def _detect_device():
    # hal.is_available logs a warning for every missing plugin; silence it here.
    ms_logger = logging.getLogger("mindspore")
    level = ms_logger.level
    ms_logger.setLevel(logging.ERROR)
    try:
        for name in ("Ascend", "GPU"):
            if ms.hal.is_available(name):
                return name
    finally:
        ms_logger.setLevel(level)
    return "CPU"


def check_dtype(dtype) -> None:
    """bf16 matmuls have no CPU kernel in MindSpore 2.10; say so up front."""
    if dtype == ms.bfloat16 and device() == "CPU":
        raise ValueError("bf16 needs an Ascend device: MindSpore has no bf16 MatMul kernel on CPU; "
                         "use fp16 or float32 (mixed_precision: fp16 or no)")
