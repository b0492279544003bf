"""The transpose of the video UNet, [A, B, C, D] -> [A, C, B, D], on whichever kernel the runtime chose."""
from tuneavideo_ms.runtime import cpu_kernels

# The C++ kernel on CPU, else None for MindSpore's Transpose. A module global and not an attribute: graph
# mode resolves it while parsing the functions below, in whichever cell calls them. Only use() sets it.
_swap_axes = None


def use(library):
    """Transposes with the C++ kernels of `library` (a path), or with MindSpore's Transpose (None)."""
    global _swap_axes
    _swap_axes = cpu_kernels.swap_axes_op(library) if library else None


def swap_axes_1_2(x):
    """[A, B, C, D] -> [A, C, B, D]: every transpose of the video UNet, once reshaped. On CPU a C++ kernel:
    MindSpore's CPU Transpose holds twice its output's size for as long as its graph lives."""
    if _swap_axes is not None:
        return _swap_axes(x)
    return x.transpose(0, 2, 1, 3)


def fast_transpose():
    """Whether the C++ kernel transposes (tests ask)."""
    return _swap_axes is not None
