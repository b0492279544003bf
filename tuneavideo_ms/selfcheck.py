"""`python -m tuneavideo_ms.selfcheck`: run this on a new device (your first NPU or GPU) before a real job.

Every fast kernel this device runs (attention, FlashAttention, convolution, GroupNorm, LayerNorm, GEGLU,
AdamW) is compared with MindSpore's plain ops, forward and backward, on small and Stable-Diffusion-sized
shapes, and one training step of the tiny model runs in each precision the device supports. Prints a
table (check, shape, dtype, largest relative difference, time fast / portable, verdict) and exits
non-zero if anything disagrees.
"""
import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

# float32 sums in another order; half precision: about 3 significant digits
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}


@dataclass
class Result:
    check: str
    shape: str
    dtype: str
    difference: float
    fast_ms: float
    portable_ms: float

    @property
    def passed(self):
        return bool(np.isfinite(self.difference)) and self.difference <= TOLERANCE[self.dtype]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _timed(fn, *args):
    out = fn(*args)  # the first call compiles
    start = time.perf_counter()
    out = fn(*args)
    _sync(out)
    return out, (time.perf_counter() - start) * 1e3


def _sync(out):
    for x in (out if isinstance(out, (tuple, list)) else (out,)):
        x.asnumpy() if hasattr(x, "asnumpy") else _sync(x)


def _forward_backward(cell_or_fn, inputs, dtype):
    """(output and input gradients as float32 numpy arrays, milliseconds) of `cell_or_fn` on `inputs`."""
    import mindspore as ms
    xs = [ms.Tensor(x).astype(dtype) for x in inputs]
    # a fixed random projection of the output: the gradient of a norm's output squared would vanish
    shape = cell_or_fn(*xs).shape
    probe = ms.Tensor(np.random.default_rng(1).standard_normal(shape).astype(np.float32))

    def loss(*args):
        return (cell_or_fn(*args).astype(ms.float32) * probe).mean()

    run = ms.value_and_grad(loss, grad_position=tuple(range(len(xs))))
    (value, grads), elapsed = _timed(run, *xs)
    out = cell_or_fn(*xs)
    return [out.astype(ms.float32).asnumpy()] + [g.astype(ms.float32).asnumpy() for g in grads], elapsed


def _compare(name, shape, dtype, make, inputs, fast, portable):
    """Builds the check's cell with each registry and compares outputs and gradients."""
    import mindspore as ms

    from tuneavideo_ms import runtime
    from tuneavideo_ms.weights import load_into, state_dict
    with runtime.using(fast):
        fast_cell = make()
    with runtime.using(portable):
        portable_cell = make()
    if hasattr(fast_cell, "parameters_dict"):
        load_into(portable_cell, state_dict(fast_cell))  # the same weights, in each kernel's layout
        if dtype != ms.float32:
            fast_cell.to_float(dtype)
            portable_cell.to_float(dtype)
    got, fast_ms = _forward_backward(fast_cell, inputs, dtype)
    want, portable_ms = _forward_backward(portable_cell, inputs, dtype)
    difference = max(_rel(g, w) for g, w in zip(got, want))
    return Result(name, shape, str(dtype).lower(), difference, fast_ms, portable_ms)


def _dtypes(device):
    import mindspore as ms
    return {"CPU": [ms.float32], "GPU": [ms.float32, ms.float16],
            "Ascend": [ms.float32, ms.float16, ms.bfloat16]}[device]


def kernel_checks(quick):
    """The fast kernels of the current device against the portable ones."""
    from mindspore import nn

    from tuneavideo_ms import runtime
    from tuneavideo_ms.models.attention import GEGLU
    from tuneavideo_ms.models.normalization import GroupNorm, LayerNorm
    from tuneavideo_ms.models.resnet import InflatedConv3d
    from tuneavideo_ms.runtime.kernels import Kernels

    fast = runtime.kernels()
    portable = Kernels(fast.device, "portable")
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    class Attention(nn.Cell):
        def __init__(self, heads):
            super().__init__()
            self.attention, self.heads = runtime.kernels().attention(), heads

        def construct(self, q, k, v):
            return self.attention(q, k, v, self.heads, 1 / 8, True)

    # (check, shape label, make, inputs): small shapes, then Stable Diffusion 1.5's largest level
    cases = [
        ("attention (spatial)", "2x256x320, 8 heads", lambda: Attention(8), [normal(2, 256, 320)] * 3),
        ("attention (cross)", "2x256x320 / 77 keys", lambda: Attention(8),
         [normal(2, 256, 320), normal(2, 77, 320), normal(2, 77, 320)]),
        ("attention (temporal)", "1024x8x320", lambda: Attention(8), [normal(1024, 8, 320)] * 3),
        ("convolution 3x3", "1x64x4x16x16", lambda: InflatedConv3d(64, 64, 3, padding=1),
         [normal(1, 64, 4, 16, 16)]),
        ("GroupNorm", "1x64x4x16x16", lambda: GroupNorm(32, 64), [normal(1, 64, 4, 16, 16) * 2 + 1]),
        ("LayerNorm", "2x256x320", lambda: LayerNorm(320), [normal(2, 256, 320)]),
        ("GEGLU", "512x320", lambda: GEGLU(320, 1280), [normal(512, 320)]),
    ]
    if not quick:
        cases += [
            ("attention (spatial)", "16x4096x320, 8 heads (SD 1.5)", lambda: Attention(8),
             [normal(16, 4096, 320)] * 3),
            ("convolution 3x3", "1x320x8x64x64 (SD 1.5)", lambda: InflatedConv3d(320, 320, 3, padding=1),
             [normal(1, 320, 8, 64, 64)]),
            ("GroupNorm", "1x320x8x64x64 (SD 1.5)", lambda: GroupNorm(32, 320), [normal(1, 320, 8, 64, 64)]),
        ]
    results = []
    for dtype in _dtypes(fast.device):
        for name, shape, make, inputs in cases:
            results.append(_compare(name, shape, dtype, make, inputs, fast, portable))
    results.append(_adamw_check(fast, portable, rng))
    return results


def _adamw_check(fast, portable, rng):
    import mindspore as ms

    from tuneavideo_ms import runtime
    from tuneavideo_ms.optim import AdamW
    start = rng.standard_normal((320, 1280)).astype(np.float32)
    grad = ms.Tensor(rng.standard_normal((320, 1280)).astype(np.float32))
    values, times = [], []
    for registry in (fast, portable):
        param = ms.Parameter(ms.Tensor(start), name="w")
        with runtime.using(registry):
            optimizer = AdamW([param], weight_decay=0.01)
        begin = time.perf_counter()
        for _ in range(3):
            optimizer((grad,), ms.Tensor(1e-3, ms.float32), ms.Tensor(True))
        values.append(param.asnumpy())
        times.append((time.perf_counter() - begin) * 1e3 / 3)
    return Result("AdamW", "320x1280, 3 steps", "float32", _rel(values[0], values[1]), *times)


def training_checks():
    """One training step of the tiny model in each precision: the fast kernels against the portable."""
    import mindspore as ms

    from tuneavideo_ms import runtime, tiny, training
    from tuneavideo_ms.models import UNet3DConditionModel
    from tuneavideo_ms.optim import AdamW
    from tuneavideo_ms.runtime.kernels import Kernels

    fast = runtime.kernels()
    rng = np.random.default_rng(0)
    shape = (1, 4, 2, 16, 16)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    noise = [rng.standard_normal((1,) + shape).astype(np.float32) for _ in range(2)]  # one micro-batch
    context = rng.standard_normal((1, 77, tiny.UNET_CONFIG["cross_attention_dim"])).astype(np.float32)
    results = []
    for dtype in _dtypes(fast.device):
        losses, grads, times = [], [], []
        for registry in (fast, Kernels(fast.device, "portable")):
            ms.set_seed(0)
            np.random.seed(0)
            with runtime.using(registry):
                unet = UNet3DConditionModel(**tiny.UNET_CONFIG)
                if dtype != ms.float32:
                    unet.to_float(dtype)
                params = training.trainable_parameters(unet, ["attn1.to_q", "attn2.to_q", "attn_temp"])
                step = training.TrainStep(unet, params, AdamW(params), "epsilon", 0.18, 1.0)
            alpha = ms.Tensor(np.full((1, 1, 1, 1, 1, 1), 0.7, np.float32))
            args = (ms.Tensor(inputs[0]), ms.Tensor(inputs[1]), ms.Tensor(noise[0]), ms.Tensor(noise[1]),
                    alpha, ms.Tensor(np.sqrt(1 - 0.49, dtype=np.float32).reshape(1, 1, 1, 1, 1, 1)),
                    ms.Tensor([[500.0]]), ms.Tensor(context), ms.Tensor(1.0), ms.Tensor(1e-4))
            begin = time.perf_counter()
            # the loss and gradients the step's optimizer gets (one micro-batch), then the whole step
            micro = [x[0] for x in args[2:7]]
            (_, loss), g = step.grad_fn(args[0], args[1], *micro, args[7], args[8])
            _, finite = step(*args)
            losses.append(float(loss.asnumpy()) if bool(finite.asnumpy()) else float("nan"))
            grads.append(np.concatenate([x.astype(ms.float32).asnumpy().ravel() for x in g]))
            times.append((time.perf_counter() - begin) * 1e3)
        difference = max(_rel(losses[0], losses[1]), _rel(grads[0], grads[1]))
        results.append(Result("training step (tiny model)", "2 frames of 16x16: loss, gradients",
                              str(dtype).lower(), difference, *times))
    return results


def table(results, device):
    lines = ["| check | shape | dtype | device | max relative difference | fast / portable (ms) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        verdict = "ok" if r.passed else "DIFFERS"
        lines.append(f"| {r.check} | {r.shape} | {r.dtype} | {device} | {r.difference:.1e} "
                     f"| {r.fast_ms:.1f} / {r.portable_ms:.1f} | {verdict} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tuneavideo_ms.selfcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="Ascend, GPU or CPU (default: the first available)")
    parser.add_argument("--quick", action="store_true", help="small shapes only (none of Stable Diffusion's)")
    args = parser.parse_args(argv)

    import mindspore as ms

    from tuneavideo_ms import runtime
    device = runtime.setup(args.device, "pynative")
    name = ms.hal.get_device_name(0, device) if device != "CPU" else "CPU"
    print(f"self-check on {name}: the fast kernels against MindSpore's plain ops\n", flush=True)
    results = kernel_checks(args.quick) + training_checks()
    print(table(results, device))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"\n{len(failed)} of {len(results)} checks differ: "
              "do not train on this device before they agree")
        return 1
    print(f"\nall {len(results)} checks agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
