"""The hardware layer, beneath the models: the device and its set-up, the kernel registry model cells
build with, the CPU C++ kernels, and the compile cache.

    devices.py        setup(), current(), using(): device, execution mode, kernels
    kernels.py        Kernels: which convolution, attention and C++ operators a device runs
    conv.py           the per-frame convolutions
    attention.py      the attention kernels (portable, memory-efficient, FlashAttention)
    norms.py          the statistics of GroupNorm
    transpose.py      the video UNet's transpose
    cpu_kernels.py    the C++ kernels (csrc/) and their build
    compile_cache.py  compiled graphs on disk, keyed by graph_digest.py
    compile_child.py  optional: CPU compiles in a forked child, shared graphs, heap trimming
"""
from tuneavideo_ms.runtime.devices import (DEVICES, Runtime, check_dtype, current, device, device_id, kernels,
                                           setup, using)
from tuneavideo_ms.runtime.transpose import swap_axes_1_2

__all__ = ["DEVICES", "Runtime", "check_dtype", "current", "device", "device_id", "kernels", "setup",
           "swap_axes_1_2", "using"]
