"""Graph-mode compile time of the training step (forward, backward, clipping,
AdamW as one graph) for the full-size SD 1.5 video UNet (random weights, no
download) and the `mid` config of bench/unet.py, each in its own process.

    python bench/compile.py [--configs sd15 mid tiny] [--frames 2 --size 8]

The graph's size is the topology's, not the input's, so a small input (2
frames of 8x8 latents by default) keeps the run short; compile time is the
first call minus a second, already compiled, call. Each job runs twice, in fresh
processes sharing an empty compile cache (tuneavideo_ms.runtime.compile_cache): the first
compiles the graph (on CPU in a forked child, which exits; the job then loads
it), the second loads it. Peak memory: bench/unet.py's run_python.
"""
import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
from unet import MID, run_python  # noqa: E402


def _configs():
    from tuneavideo_ms import tiny
    # diffusers' UNet2DConditionModel defaults are SD 1.x's topology: 320-1280 channels, 8 heads
    sd15 = dict(sample_size=64, block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8,
                cross_attention_dim=768)
    return {"sd15": sd15, "mid": MID, "tiny": tiny.UNET_CONFIG}


def measure(name, recompute, frames, size):
    import mindspore as ms
    import numpy as np
    from tuneavideo_ms import runtime, training
    from tuneavideo_ms.models import UNet3DConditionModel
    from tuneavideo_ms.optim import AdamW
    runtime.setup("CPU", "graph")
    config = _configs()[name]
    unet = UNet3DConditionModel(**config)
    params = training.trainable_parameters(unet, ("attn1.to_q", "attn2.to_q", "attn_temp"))
    if recompute:
        training.enable_gradient_checkpointing(unet)
    step = training.TrainStep(unet, params, AdamW(params), "epsilon", 1.0, 1.0)
    rng = np.random.default_rng(0)
    shape = (1, config.get("in_channels", 4), frames, size, size)
    tensor = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    args = (tensor(*shape), ms.Tensor(np.zeros(shape, np.float32)), tensor(1, *shape), tensor(1, *shape),
            ms.Tensor(np.full((1, 1, 1, 1, 1, 1), 0.7, np.float32)),
            ms.Tensor(np.full((1, 1, 1, 1, 1, 1), 0.7, np.float32)),
            ms.Tensor(np.array([[500.0]], np.float32)), tensor(1, 77, config["cross_attention_dim"]),
            ms.Tensor(1.0), ms.Tensor(1e-5))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        step(*args)[0].asnumpy()
        times.append(time.perf_counter() - start)
    return {"params_m": sum(p.size for p in unet.get_parameters()) / 1e6, "first_s": times[0],
            "second_s": times[1], "compile_s": times[0] - times[1]}


def _measure(code, env):
    result = run_python(code, env)
    return None if result is None else dict(result[0], peak_gb=result[1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["sd15", "mid"], choices=["sd15", "mid", "tiny"])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            for recompute in (False, True):
                print(f"{name} recompute={recompute} ...", file=sys.stderr, flush=True)
                code = (f"import sys, json; sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); "
                        "import compile; "
                        f"print('RESULT', json.dumps(compile.measure({name!r}, {recompute}, {args.frames}, "
                        f"{args.size})))")
                # a fresh cache: the first run compiles and stores the graph, the second loads it
                cache = os.path.join(tmp, f"{name}-{recompute}")
                env = dict(os.environ, PYTHONPATH=REPO, TUNEAVIDEO_COMPILE_CACHE=cache)
                compiled = _measure(code, env)
                rows.append((name, recompute, compiled, _measure(code, env) if compiled else None))
    print(f"training step, graph mode, CPU, {args.frames} frames of {args.size}x{args.size} latents\n")
    print("| config | parameters | gradient checkpointing | compile (s) | load from the compile cache (s) | "
          "compiled step (s) | peak memory (GiB): compiled / loaded |")
    print("|---|---|---|---|---|---|---|")
    for name, recompute, r, cached in rows:
        checkpointing = "yes" if recompute else "no"
        if r is None:
            print(f"| {name} | - | {checkpointing} | killed: out of memory | - | - "
                  "| above the host's memory |")
            continue
        print(f"| {name} | {r['params_m']:.0f} M | {checkpointing} | {r['compile_s']:.1f} | "
              f"{cached['compile_s']:.1f} | {r['second_s']:.2f} | "
              f"{r['peak_gb']:.2f} / {cached['peak_gb']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
