"""The video UNet on CPU, this project against PyTorch, side by side in one run.

The PyTorch model is the tests' oracle (tests/torch_reference.py: diffusers'
UNet2DConditionModel over the frames with Tune-A-Video's sparse-causal
attention, temporal attention and frame-pooled GroupNorm); ours loads the same
weights from the file the oracle writes in the PyTorch Tune-A-Video format.
Same inputs, fp32, both pinned to the same thread count, each job in its own
process. Peak memory is the peak of the summed PSS (proportional set size) of
the job's process and its children, sampled every 50 ms: a graph compiled in a
forked child (tuneavideo_ms/runtime/compile_child.py) counts, pages they share once.

    python bench/unet.py [--configs tiny mid] [--threads 2] [--repeat 3] [--json out.json]

A job the machine's memory cannot hold is killed and shows as "out of memory".

Rows: forward without grad; one training step (attn1.to_q, attn2.to_q and
attn_temp trainable, AdamW, loss, backward, clipping, update); the same step
with gradient checkpointing; peak memory, and peak memory when each job runs
again and loads its graph from the compile cache the first run filled. Times are the
best of --repeat calls after one warm-up call (the warm-up is where MindSpore
compiles: bench/compile.py).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")
# SD 1.5's topology (diffusers' UNet2DConditionModel defaults) at smaller widths
MID = dict(sample_size=32, block_out_channels=[64, 128, 256, 256], attention_head_dim=8,
           cross_attention_dim=768)
CONFIGS = {"tiny": dict(frames=4, size=8, tokens=77), "mid": dict(unet=MID, frames=8, size=32, tokens=77)}
JOBS = ("forward", "train", "train+checkpointing")


def _unet_config(name):
    from tuneavideo_ms import tiny
    return CONFIGS[name].get("unet", tiny.UNET_CONFIG)


def _inputs(name, context_dim):
    import numpy as np
    c = CONFIGS[name]
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, 4, c["frames"], c["size"], c["size"]), dtype=np.float32)
    context = rng.standard_normal((1, c["tokens"], context_dim), dtype=np.float32)
    noise = rng.standard_normal(sample.shape, dtype=np.float32)
    return sample, context, noise


def best_of(fn, repeat):
    """The best time of `repeat` calls after a warm-up call (where MindSpore compiles)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_torch(name, job, folder, threads, repeat):
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from torch_reference import VideoUNetOracle, make_unet_2d
    torch.set_num_threads(threads)
    config = _unet_config(name)
    model = VideoUNetOracle(make_unet_2d(config), CONFIGS[name]["frames"])
    sample, context, noise = (torch.from_numpy(a) for a in _inputs(name, config["cross_attention_dim"]))
    t = torch.tensor([500])
    if job == "forward":
        model.eval()

        def call():
            with torch.no_grad():
                model(sample, t, context)
    else:
        params = []
        for n, p in model.named_parameters():
            p.requires_grad_(any(m in n for m in MODULES))
            if p.requires_grad:
                params.append(p)
        if job == "train+checkpointing":
            model.unet.enable_gradient_checkpointing()
        model.train()
        opt = torch.optim.AdamW(params, lr=1e-5)

        def call():
            loss = torch.nn.functional.mse_loss(model(sample, t, context), noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
    return best_of(call, repeat)


def run_mindspore(name, job, folder, threads, repeat):
    import mindspore as ms
    import numpy as np
    from tuneavideo_ms import runtime, training
    from tuneavideo_ms.runtime import cpu_kernels
    from tuneavideo_ms.models import UNet3DConditionModel
    from tuneavideo_ms.optim import AdamW
    runtime.setup("CPU", "graph")
    ms.device_context.cpu.op_tuning.threads_num(threads)
    cpu_kernels.set_threads(threads)
    unet = UNet3DConditionModel.from_pretrained(folder)
    sample, context, noise = (ms.Tensor(a) for a in _inputs(name, _unet_config(name)["cross_attention_dim"]))
    if job == "forward":
        unet.set_train(False)
        t = ms.Tensor(np.array([500.0], np.float32))
        return best_of(lambda: unet(sample, t, context).asnumpy(), repeat)
    params = training.trainable_parameters(unet, MODULES)
    if job == "train+checkpointing":
        training.enable_gradient_checkpointing(unet)
    # the posterior is a point mass at `sample` / scaling_factor; alpha 0.5 for every sample
    step = training.TrainStep(unet, params, AdamW(params), "epsilon", 1.0, 1.0)
    half = ms.Tensor(np.full((1, 1, 1, 1, 1, 1), 0.5 ** 0.5, np.float32))
    args = (sample, ms.Tensor(np.zeros(sample.shape, np.float32)),
            ms.Tensor(np.zeros((1,) + sample.shape, np.float32)), noise[None], half, half,
            ms.Tensor(np.array([[500.0]], np.float32)), context, ms.Tensor(1.0), ms.Tensor(1e-5))
    return best_of(lambda: step(*args)[0].asnumpy(), repeat)


def count_flops(name):
    """GFLOP of one forward and of one training step's forward and backward (PyTorch's count of the
    oracle's matrix products and convolutions, the work both frameworks do)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from torch_reference import VideoUNetOracle, make_unet_2d
    config = _unet_config(name)
    model = VideoUNetOracle(make_unet_2d(config), CONFIGS[name]["frames"])
    sample, context, noise = (torch.from_numpy(a) for a in _inputs(name, config["cross_attention_dim"]))
    t = torch.tensor([500])
    for n, p in model.named_parameters():
        p.requires_grad_(any(m in n for m in MODULES))
    counts = {}
    for job in ("forward", "train"):
        with FlopCounterMode(display=False) as counter:
            if job == "forward":
                with torch.no_grad():
                    model(sample, t, context)
            else:
                torch.nn.functional.mse_loss(model(sample, t, context), noise).backward()
        counts[job] = counter.get_total_flops() / 1e9
    return counts


def sgemm_rate(threads, size=2048, repeat=5):
    """The machine's single-precision matrix-multiply rate in GFLOP/s: the best of `repeat` products of two
    size x size matrices (PyTorch's, on `threads` threads)."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / best_of(lambda: torch.mm(a, b), repeat) / 1e9


def _child(framework, name, job, folder, threads, repeat, cache):
    """Runs one job in a fresh process; returns (seconds, peak memory in GiB), or None if it was killed."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO, TUNEAVIDEO_COMPILE_CACHE=cache)
    code = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); "
            f"import unet, json; "
            f"s = unet.run_{framework}({name!r}, {job!r}, {folder!r}, {threads}, {repeat}); "
            "print('RESULT', json.dumps(s))")
    return run_python(code, env)


def run_python(code, env):
    """Runs `code` in a fresh interpreter; returns [the JSON after its RESULT line, the peak memory of its
    processes in GiB], or None if it was killed (memory). The code runs from a file: MindSpore's compile
    cache needs an entry script."""
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(code)
        script.flush()
        job = subprocess.Popen([sys.executable, script.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
        peak = [0.0]
        sampler = threading.Thread(target=_sample_memory, args=(job, peak))
        sampler.start()
        stdout, stderr = job.communicate()
        sampler.join()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT")]
    if job.returncode in (-9, 137):
        return None
    if job.returncode != 0 or not lines:
        raise RuntimeError(f"job failed:\n{stderr[-3000:]}")
    return [json.loads(lines[-1][len("RESULT"):]), peak[0]]


def _sample_memory(job, peak):
    while job.poll() is None:
        peak[0] = max(peak[0], sum(_pss_kib(pid) for pid in _process_tree(job.pid)) / 2 ** 20)
        time.sleep(0.05)


def _process_tree(pid):
    pids = [pid]
    for parent in pids:  # grows while it runs
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    pids += [int(child) for child in f.read().split()]
        except OSError:  # it has exited
            pass
    return pids


def _pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def _write_weights(name, folder):
    """The oracle's weights in the PyTorch Tune-A-Video format, for both sides."""
    code = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'tests')!r}); sys.path.insert(0, {REPO!r}); "
            f"sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); import unet; "
            "from torch_reference import VideoUNetOracle, make_unet_2d; "
            f"VideoUNetOracle(make_unet_2d(unet._unet_config({name!r})), 1).save_original_format({folder!r})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"], choices=list(CONFIGS))
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            folder = os.path.join(tmp, name)
            _write_weights(name, folder)
            cache = os.path.join(tmp, "graphs")  # empty at first: the first run compiles, the second loads
            for job in args.jobs:
                for framework in ("torch", "mindspore", "mindspore-loaded"):
                    print(f"{name} {job} {framework} ...", file=sys.stderr, flush=True)
                    results[f"{name}/{job}/{framework}"] = _child(framework.split("-")[0], name, job, folder,
                                                                  args.threads, args.repeat, cache)
    print(f"CPU, {args.threads} threads, fp32, best of {args.repeat} after a warm-up call\n")
    print("| config | row | PyTorch | this project | ratio |")
    print("|---|---|---|---|---|")
    for name in args.configs:
        peaks = {"torch": 0.0, "mindspore": 0.0}
        for job in args.jobs:
            cells = []
            for framework in ("torch", "mindspore"):
                r = results[f"{name}/{job}/{framework}"]
                peaks[framework] = max(peaks[framework], r[1]) if r else float("inf")
                cells.append(f"{r[0]:.3f}" if r else "out of memory")
            r_t, r_m = results[f"{name}/{job}/torch"], results[f"{name}/{job}/mindspore"]
            ratio = f"{r_m[0] / r_t[0]:.2f}x" if r_t and r_m else "-"
            print(f"| {name} | {job} (s) | {cells[0]} | {cells[1]} | {ratio} |")
        loaded = [results[f"{name}/{job}/mindspore-loaded"] for job in args.jobs]
        peaks["mindspore-loaded"] = max(r[1] if r else float("inf") for r in loaded)
        for key, row in (("mindspore", "peak memory (GiB)"),
                         ("mindspore-loaded", "peak memory, graphs loaded (GiB)")):
            if peaks[key] == float("inf"):
                print(f"| {name} | {row} | {peaks['torch']:.2f} | above the host's memory | - |")
            else:
                ratio = peaks[key] / peaks["torch"]
                print(f"| {name} | {row} | {peaks['torch']:.2f} | {peaks[key]:.2f} | {ratio:.2f}x |")
    _print_rates(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _print_rates(args, results):
    """The achieved GFLOP/s of each framework against the machine's sgemm rate, measured now."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=REPO)
    bench = os.path.join(REPO, "bench")
    sgemm = run_python(f"import sys; sys.path.insert(0, {bench!r}); import unet, json; "
                       f"print('RESULT', json.dumps(unet.sgemm_rate({args.threads})))", env)[0]
    print(f"\nThe machine's limit: sgemm of 2048x2048 matrices, {args.threads} threads: "
          f"{sgemm:.1f} GFLOP/s\n")
    print("| config | row | GFLOP | PyTorch GFLOP/s | this project GFLOP/s | this project / sgemm |")
    print("|---|---|---|---|---|---|")
    for name in args.configs:
        flops = run_python(f"import sys; sys.path.insert(0, {bench!r}); import unet, json; "
                           f"print('RESULT', json.dumps(unet.count_flops({name!r})))", env)[0]
        for job, counted in (("forward", "forward"), ("train", "train")):
            r_t, r_m = results.get(f"{name}/{job}/torch"), results.get(f"{name}/{job}/mindspore")
            if not (r_t and r_m):
                continue
            ours = flops[counted] / r_m[0]
            print(f"| {name} | {job} | {flops[counted]:.1f} | {flops[counted] / r_t[0]:.1f} | {ours:.1f} | "
                  f"{100 * ours / sgemm:.0f}% |")


if __name__ == "__main__":
    main()
