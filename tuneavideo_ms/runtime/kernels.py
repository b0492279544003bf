"""The kernel registry: which convolution, attention and fused C++ operators a device runs.

Model cells ask the current registry (runtime.kernels()) for their kernels when they are built; every
kernel computes the portable kernel's numbers (tests compare them), so the choice changes speed and
memory, never results.
"""
from typing import Optional

import mindspore as ms

from tuneavideo_ms.runtime import attention, conv, cpu_kernels

CHOICES = ("auto", "portable")

# the C++ operators cells can ask for by name (CPU only; float32)
_NATIVE_OPS = {
    "group_norm": cpu_kernels.group_norm_op,
    "geglu": cpu_kernels.geglu_op,
    "adamw": cpu_kernels.adamw_op,
}


class Kernels:
    """The kernels of one device: `choice` "auto" takes each device's fast kernels (the C++ library on
    CPU, FlashAttention on Ascend), "portable" MindSpore's plain ops everywhere. `library` is the built
    C++ library's path (CPU, "auto", a working g++), else None."""

    def __init__(self, device: str, choice: str = "auto", library: Optional[str] = None):
        if choice not in CHOICES:
            raise ValueError(f"kernels must be 'auto' or 'portable', not {choice!r}")
        self.device, self.choice, self.library = device, choice, library

    @classmethod
    def build(cls, device: str, choice: str = "auto") -> "Kernels":
        """The registry for `device`, building the CPU library when the choice needs it."""
        library = cpu_kernels.build_library() if device == "CPU" and choice == "auto" else None
        return cls(device, choice, library)

    def _fast(self, device):
        return self.choice == "auto" and self.device == device

    def conv(self, kernel_size: int, stride: int, padding: int):
        """The per-frame convolution cell: (x [b, c, f, h, w], weight, bias) -> [b, c', f, h', w']; its
        `flat_weight` says whether the weight is [out, in * k * k] or [out, in, k, k]."""
        if self._fast("CPU"):
            if self.library:
                return conv.ClipIm2ColConv(self.library, kernel_size, stride, padding)
            return conv.FrameConv(conv.conv2d_matmul, kernel_size, stride, padding)
        return conv.FrameConv(conv.conv2d_portable, kernel_size, stride, padding)

    def attention(self):
        """An attention(q, k, v, heads, scale, upcast, mask=None) over [batch, length, heads * dim]."""
        # FlashAttentionScore serves spatial (sparse-causal), cross and temporal attention alike
        if self._fast("Ascend"):
            return attention.flash_attention(ms.ops.flash_attention_score)
        if self._fast("CPU"):
            fused = cpu_kernels.FusedAttention(self.library) if self.library else None
            return attention.MemoryEfficientAttention(fused=fused)
        return attention.attention_portable

    def native(self, name: str):
        """The C++ operator `name` ("group_norm", "geglu", "adamw"; see cpu_kernels) where the library is
        built, else None: the cell then computes with MindSpore's ops."""
        if name not in _NATIVE_OPS:
            raise ValueError(f"no native kernel {name!r}; there are {', '.join(_NATIVE_OPS)}")
        return _NATIVE_OPS[name](self.library) if self.library else None
