"""CPU convolution of every frame of a clip: MindSpore's nn.Conv2d against
the runtime's convolution kernels (Im2Col + MatMul per frame, PyNative and graph mode; the
clip's C++ im2col + one MatMul, graph mode), side by side with PyTorch when
installed.

    python bench/conv.py [--shape 1,64,8,32,32] [--repeat 5]
"""
import argparse

import mindspore as ms
import numpy as np
from mindspore import nn

from tuneavideo_ms import runtime
from tuneavideo_ms.runtime import conv as conv_kernels
from unet import best_of


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="1,64,8,32,32", help="b,c,f,h,w")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    b, c, f, h, w = (int(v) for v in args.shape.split(","))
    n = b * f
    runtime.setup("CPU", "pynative")
    rng = np.random.default_rng(0)
    clip_np = rng.standard_normal((b, c, f, h, w), dtype=np.float32)
    x_np = clip_np.transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)  # the frames in the batch
    w_np = rng.standard_normal((c, c, 3, 3), dtype=np.float32) * 0.05
    b_np = rng.standard_normal(c, dtype=np.float32)
    x, weight, bias = ms.Tensor(x_np), ms.Tensor(w_np), ms.Tensor(b_np)
    flat = ms.Tensor(w_np.reshape(c, -1))  # the matmul kernel's layout
    conv = nn.Conv2d(c, c, 3, pad_mode="pad", padding=1, has_bias=True)
    conv.weight.set_data(weight)
    conv.bias.set_data(bias)
    reference = conv(x).asnumpy()

    def matmul_conv(x, weight, bias):
        return conv_kernels.conv2d_matmul(x, weight, bias, 3, 1, 1)

    jitted = ms.jit(matmul_conv)
    clip, clip_cell = ms.Tensor(clip_np), runtime.kernels().conv(3, 1, 1)

    @ms.jit
    def clip_conv(x, weight, bias):
        return clip_cell(x, weight, bias)

    def frames_first(out):  # the clip conv's [b, c, f, h, w] as the others' [b * f, c, h, w]
        return out.asnumpy().transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
    rows = [("MindSpore nn.Conv2d (PyNative)", lambda: conv(x).asnumpy()),
            ("MatMul conv per frame, PyNative", lambda: matmul_conv(x, flat, bias).asnumpy()),
            ("MatMul conv per frame, ms.jit (graph)", lambda: jitted(x, flat, bias).asnumpy()),
            ("clip im2col (C++) + MatMul, ms.jit (graph)", lambda: frames_first(clip_conv(clip, flat, bias)))]
    try:
        import torch
        torch.set_num_threads(ms.get_context("runtime_num_threads") or 2)
        tconv = torch.nn.Conv2d(c, c, 3, padding=1)
        with torch.no_grad():
            tconv.weight.copy_(torch.from_numpy(w_np))
            tconv.bias.copy_(torch.from_numpy(b_np))
        tx = torch.from_numpy(x_np)
        rows.append(("PyTorch Conv2d", lambda: tconv(tx).detach()))
    except ImportError:
        pass

    flops = 2 * n * c * c * 9 * h * w
    base = None
    print(f"3x3 conv {c}->{c} of each frame of a clip [{b},{c},{f},{h},{w}], best of {args.repeat}\n")
    print("| kernel | seconds | GFLOP/s | speed-up vs nn.Conv2d | max rel. diff vs nn.Conv2d |")
    print("|---|---|---|---|---|")
    for name, fn in rows:
        seconds = best_of(fn, args.repeat)
        base = base or seconds
        out = np.asarray(fn())
        diff = np.abs(out - reference).max() / np.abs(reference).max()
        gflops = flops / seconds / 1e9
        print(f"| {name} | {seconds:.4f} | {gflops:.1f} | {base / seconds:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
