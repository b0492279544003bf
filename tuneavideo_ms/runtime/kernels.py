"""The kernel registry: which convolution, attention and fused C++ operators a device runs.

Model cells ask the current registry (runtime.kernels()) for their kernels when they are built; every
kernel computes the portable kernel's numbers (tests compare them), so the choice changes speed and
memory, never results.
"""
from typing import Optional

import mindspore as ms

from tuneavideo_ms.runtime import attention, conv, cpu_kernels, norms

CHOICES = ("auto", "portable")
# CANN runs FlashAttentionScore on the Atlas A2 training series (910B) and the A3 (910_93), not on the
# Atlas training series (910A)
FLASH_ATTENTION_CHIPS = ("910B", "910_93")

# the C++ operators cells can ask for by name (CPU only; float32)
_NATIVE_OPS = {
    "group_norm": cpu_kernels.group_norm_op,
    "geglu": cpu_kernels.geglu_op,
    "adamw": cpu_kernels.adamw_op,
}


class Kernels:
    """The kernels of one device: `choice` "auto" takes each device's fast kernels (the C++ library on
    CPU, FlashAttention on Ascend chips that run it), "portable" MindSpore's plain ops everywhere.
    `library` is the built C++ library's path (CPU, "auto", a working g++), else None; `chip` the Ascend
    chip's name (e.g. "Ascend910B"); `flash` the FlashAttention operator (tests give a recorder)."""

    def __init__(self, device: str, choice: str = "auto", library: Optional[str] = None,
                 chip: Optional[str] = None, flash=None):
        if choice not in CHOICES:
            raise ValueError(f"kernels must be 'auto' or 'portable', not {choice!r}")
        self.device, self.choice, self.library, self.chip = device, choice, library, chip
        self.flash = flash or ms.ops.flash_attention_score

    @classmethod
    def build(cls, device: str, choice: str = "auto") -> "Kernels":
        """The registry for `device`, building the CPU library when the choice needs it."""
        library = cpu_kernels.build_library() if device == "CPU" and choice == "auto" else None
        chip = ms.hal.get_device_name(0, "Ascend") if device == "Ascend" else None
        return cls(device, choice, library, chip)

    def flash_attention_runs(self) -> bool:
        """Whether this device runs FlashAttentionScore (Ascend, on a chip CANN supports it on)."""
        return self._fast("Ascend") and any(name in (self.chip or "") for name in FLASH_ATTENTION_CHIPS)

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
        if self.flash_attention_runs():
            return attention.flash_attention(self.flash)
        if self._fast("CPU"):
            fused = cpu_kernels.FusedAttention(self.library) if self.library else None
            return attention.MemoryEfficientAttention(fused=fused)
        return attention.attention_portable

    def group_statistics(self, eps: float):
        """A cell normalising each row of x [rows, length] by its own mean and variance, in float32."""
        if self.device == "CPU":
            return norms.LayerNormRows(eps)
        # Ascend's LayerNorm takes its scale over the normalised axes only (begin_params_axis must
        # equal begin_norm_axis), so elsewhere the statistics are computed with reductions
        return norms.ReducedRows(eps)

    def native(self, name: str):
        """The C++ operator `name` ("group_norm", "geglu", "adamw"; see cpu_kernels) where the library is
        built, else None: the cell then computes with MindSpore's ops."""
        if name not in _NATIVE_OPS:
            raise ValueError(f"no native kernel {name!r}; there are {', '.join(_NATIVE_OPS)}")
        return _NATIVE_OPS[name](self.library) if self.library else None
