"""One sparse-causal attention on CPU, forward and backward: MindSpore's
portable attention, blocks of queries with a recomputing backward (this
project's CPU attention without a C++ compiler), the fused C++ kernel (with
one) and PyTorch's scaled_dot_product_attention, each in its own process (peak
memory: bench/unet.py's run_python), same inputs, fp32, same thread count.

    python bench/attention.py [--threads 2] [--repeat 3] [--json out.json]

The shape is mid's largest (bench/unet.py): 8 frames of 32x32 latents, 8
heads of 8 channels, keys from two frames: q [8, 1024, 64], k and v
[8, 2048, 64]. Rows: the forward alone; forward and backward (gradients of
q, k and v of a weighted sum of the output).
"""
import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
from unet import best_of, run_python  # noqa: E402

HEADS, DIM, FRAMES, TOKENS = 8, 8, 8, 1024
JOBS = ("forward", "forward+backward")
KERNELS = ("torch", "portable", "blockwise", "fused")


def _inputs():
    import numpy as np
    rng = np.random.default_rng(0)
    shapes = [(FRAMES, TOKENS, HEADS * DIM), (FRAMES, 2 * TOKENS, HEADS * DIM),
              (FRAMES, 2 * TOKENS, HEADS * DIM), (FRAMES, TOKENS, HEADS * DIM)]
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def run_torch(job, threads, repeat):
    import torch
    torch.set_num_threads(threads)
    q, k, v, w = (torch.from_numpy(a) for a in _inputs())
    grad = job != "forward"
    heads = [x.reshape(FRAMES, -1, HEADS, DIM).transpose(1, 2).requires_grad_(grad) for x in (q, k, v)]

    def call():
        with torch.set_grad_enabled(job != "forward"):
            out = torch.nn.functional.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(q.shape)
            if job != "forward":
                (out * w).sum().backward()
    return best_of(call, repeat)


def run_mindspore(kernel, job, threads, repeat):
    import mindspore as ms
    from tuneavideo_ms import runtime
    from tuneavideo_ms.runtime import attention as kernels, cpu_kernels
    from tuneavideo_ms.runtime.kernels import Kernels
    runtime.setup("CPU", "graph")
    ms.device_context.cpu.op_tuning.threads_num(threads)
    cpu_kernels.set_threads(threads)
    q, k, v, w = (ms.Tensor(a) for a in _inputs())
    attention = {"portable": kernels.attention_portable,
                 "blockwise": kernels.MemoryEfficientAttention(),
                 "fused": Kernels.build("CPU").attention()}[kernel]

    def loss(q, k, v):
        return (attention(q, k, v, HEADS, DIM ** -0.5, False) * w).sum()
    fn = ms.jit(loss if job == "forward" else ms.grad(loss, (0, 1, 2)))

    def call():
        out = fn(q, k, v)
        return [x.asnumpy() for x in (out if isinstance(out, tuple) else (out,))]
    return best_of(call, repeat)


def _child(kernel, job, threads, repeat):
    call = f"run_torch({job!r}, {threads}, {repeat})" if kernel == "torch" else \
        f"run_mindspore({kernel!r}, {job!r}, {threads}, {repeat})"
    code = (f"import sys; sys.argv = ['attention.py']; sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); "
            f"import attention, json; print('RESULT', json.dumps(attention.{call}))")
    return run_python(code, dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for job in JOBS:
        for kernel in KERNELS:
            print(f"{job} {kernel} ...", file=sys.stderr, flush=True)
            results[f"{job}/{kernel}"] = _child(kernel, job, args.threads, args.repeat)
    print(f"CPU, {args.threads} threads, fp32, q [{FRAMES}, {TOKENS}, {HEADS * DIM}], k/v "
          f"[{FRAMES}, {2 * TOKENS}, {HEADS * DIM}], {HEADS} heads; "
          f"best of {args.repeat} after a warm-up call\n")
    print("| job | PyTorch SDPA | portable | blockwise | fused (this project's CPU kernel) "
          "| fused / PyTorch |")
    print("|---|---|---|---|---|---|")
    for job in JOBS:
        cells = [results[f"{job}/{k}"] for k in KERNELS]
        text = [f"{r[0]:.3f} s, {r[1]:.2f} GiB" if r else "out of memory" for r in cells]
        ratio = f"{cells[3][0] / cells[0][0]:.2f}x" if cells[0] and cells[3] else "-"
        print(f"| {job} | {' | '.join(text)} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
