"""C++ kernels for CPU, built once per machine with the host's g++ and run as
MindSpore "aot" custom operators: fused scaled dot-product attention
(csrc/attention_cpu.cc), forward and a FlashAttention-style backward; the
transpose of the video UNet (csrc/swap_axes_cpu.cc); GroupNorm and LayerNorm
(csrc/group_norm_cpu.cc); GEGLU (csrc/geglu_cpu.cc); im2col of a clip for the
convolutions (csrc/video_im2col_cpu.cc); AdamW's update (csrc/adamw_cpu.cc).

MindSpore has no fused attention kernel on CPU, and composing one from its
ops makes about ten passes over every block of scores in memory; the C++
kernel keeps a few rows of scores in cache instead. MindSpore's CPU
Transpose, LayerNormGrad and Erf cost memory and time measured in
bench/README.md."""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

from mindspore import nn, ops

from tuneavideo_ms.runtime.paths import cache_home

logger = logging.getLogger(__name__)

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
SOURCES = [os.path.join(CSRC, name) for name in ("threads.cc", "attention_cpu.cc", "swap_axes_cpu.cc",
                                                 "group_norm_cpu.cc", "geglu_cpu.cc", "video_im2col_cpu.cc",
                                                 "adamw_cpu.cc")]
HEADERS = [os.path.join(CSRC, name) for name in ("kernels.h", "vector_math.h")]
# -fno-trapping-math: with FP exceptions kept observable, gcc neither if-converts nor vectorises the loops
# of exp and erf (no kernel reads the exception flags); -mprefer-vector-width=256: gcc tunes some
# -march=native targets (AMD's znver1, which virtual machines often report) to 128-bit vectors
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=256", "-fno-trapping-math", "-fopenmp-simd",
         "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-pthread"]
_library = {}


def _cpu_model():
    # -march=native code is only valid on the CPU it was built for
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def build_library(cache_dir=None):
    """Compile the kernels into a shared library (cached under
    ~/.cache/tuneavideo_ms by the hash of source, flags and CPU) and return its
    path, or None, with the reason logged, when there is no working g++."""
    if "path" in _library:
        return _library["path"]
    compiler = shutil.which("g++")
    path = None
    if compiler is None:
        logger.warning("no g++ on PATH to build the CPU kernels (attention, transposes, norms, GEGLU, "
                       "im2col, AdamW): falling back to MindSpore ops (slower)")
    else:
        digest = hashlib.sha256(" ".join(FLAGS).encode() + _cpu_model().encode())
        for source in SOURCES + HEADERS:
            with open(source, "rb") as f:
                digest.update(f.read())
        key = digest.hexdigest()[:16]
        cache_dir = cache_dir or cache_home()
        path = os.path.join(cache_dir, f"cpu_kernels-{key}.so")
        if not os.path.exists(path):
            path = _compile(compiler, cache_dir, path)
    _library["path"] = path
    return path


def _compile(compiler, cache_dir, path):
    try:
        os.makedirs(cache_dir, exist_ok=True)
        # build under a temporary name and rename: concurrent processes (one per card) never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    except OSError as error:
        logger.warning("cannot write the CPU kernels (%s): falling back to MindSpore ops (slower)", error)
        return None
    os.close(fd)
    logger.info("compiling the CPU kernels (attention, transposes, norms, GEGLU, im2col, AdamW): %s", path)
    result = subprocess.run([compiler, *FLAGS, "-o", tmp, *SOURCES], capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        logger.warning("g++ failed on %s, falling back to MindSpore ops (slower):\n%s", SOURCES,
                       result.stderr)
        return None
    os.replace(tmp, path)
    return path


def _lse_shape(q, k, v):
    return q, [q[0], q[2], q[1]]


class FusedAttention(nn.Cell):
    """softmax(q k^T) v over [b, length, heads, dim] inputs, q already scaled,
    float32; the forward saves only the output and one log-sum-exp per row."""

    def __init__(self, library):
        super().__init__()
        backward = ops.Custom(f"{library}:AttentionBackward", lambda q, k, v, o, lse, do: (q, k, v),
                              lambda q, k, v, o, lse, do: (q, k, v), func_type="aot")

        def bprop(q, k, v, out, dout):
            return backward(q, k, v, out[0], out[1], dout[0])
        self.forward = ops.Custom(f"{library}:AttentionForward", _lse_shape, lambda q, k, v: (q, q),
                                  func_type="aot", bprop=bprop)

    def construct(self, q, k, v):
        return self.forward(q, k, v)[0]


def _swapped_shape(shape):
    return [shape[0], shape[2], shape[1], shape[3]]


def swap_axes_op(library):
    """[A, B, C, D] -> [A, C, B, D], its backward the same swap."""
    backward = ops.Custom(f"{library}:SwapAxes12", _swapped_shape, lambda dtype: dtype, func_type="aot")

    def bprop(x, out, dout):
        return (backward(dout),)
    return ops.Custom(f"{library}:SwapAxes12", _swapped_shape, lambda dtype: dtype, func_type="aot",
                      bprop=bprop)


def group_norm_op(library):
    """(x [n, groups, length], weight, bias, eps [1]) -> (y, mean, rstd): each
    group's statistics over its length, its channels' scale and shift."""
    backward = ops.Custom(f"{library}:GroupNormBackward", lambda x, w, mean, rstd, dy: (x, w, w),
                          lambda x, w, mean, rstd, dy: (x, w, w), func_type="aot")

    def bprop(x, weight, bias, eps, out, dout):
        dx, dweight, dbias = backward(x, weight, out[1], out[2], dout[0])
        return dx, dweight, dbias, ops.zeros_like(eps)
    return ops.Custom(f"{library}:GroupNormForward", lambda x, w, b, eps: (x, x[:2], x[:2]),
                      lambda x, w, b, eps: (x, x, x), func_type="aot", bprop=bprop)


def geglu_op(library):
    """x [rows, 2 * dim] -> hidden * gelu(gate) [rows, dim], hidden and gate x's halves."""
    backward = ops.Custom(f"{library}:GegluBackward", lambda x, dout: x, lambda x, dout: x, func_type="aot")

    def bprop(x, out, dout):
        return (backward(x, dout),)
    return ops.Custom(f"{library}:GegluForward", lambda x: [x[0], x[1] // 2], lambda x: x, func_type="aot",
                      bprop=bprop)


def conv_output_size(n, kernel_size, stride, padding):
    """The length of a convolution's output along an axis of length n."""
    return (n + 2 * padding - kernel_size) // stride + 1


def _out_size(n, settings):
    return conv_output_size(n, settings[0], settings[1], settings[2] - 1)


def _cols_shape(x, settings):
    return [x[0], x[1] * settings[0] ** 2, x[2] * _out_size(x[3], settings) * _out_size(x[4], settings)]


def _clip_shape(dcols, settings, frame):
    h, w = frame
    return [dcols[0], dcols[1] // settings[0] ** 2,
            dcols[2] // (_out_size(h, settings) * _out_size(w, settings)), h, w]


def video_im2col_op(library):
    """(x [b, c, f, h, w], settings) -> columns [b, c * k * k, f * h' * w'] of
    every frame's k x k windows. `settings`, zeros of shape [k, stride,
    padding + 1], carries the convolution's settings in its shape, and the
    backward's frame placeholder [h, w] the clip's size: MindSpore infers
    shapes of every aot operator of one name with the first one's function
    and from shapes alone."""
    backward = ops.Custom(f"{library}:VideoCol2Im", _clip_shape, lambda dcols, settings, frame: dcols,
                          func_type="aot")

    def bprop(x, settings, out, dout):
        return backward(dout, settings, ops.zeros(x.shape[3:], x.dtype)), ops.zeros_like(settings)
    return ops.Custom(f"{library}:VideoIm2Col", _cols_shape, lambda x, settings: x, func_type="aot",
                      bprop=bprop)


def adamw_op(library):
    """(p, m, v, g, hyper [9]) -> (p', m', v'): one AdamW step of a float32
    parameter, its moments and gradient (hyper: see the C++ file)."""
    return ops.Custom(f"{library}:AdamWUpdate", lambda p, m, v, g, hyper: (p, p, p),
                      lambda p, m, v, g, hyper: (p, p, p), func_type="aot")


def set_threads(count):
    """Pin the kernels to `count` threads (0: every CPU the process may run
    on, the default). OMP_NUM_THREADS does not apply: MindSpore sets it to 1
    in its own process."""
    library = build_library()
    if library:
        ctypes.CDLL(library).SetThreads(int(count))
