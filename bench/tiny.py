"""Timings of the tiny model on the host, each in a fresh process, as a
markdown table: UNet forward, a 4-frame 64x64 edit (inversion + sampling) and
a training step, in PyNative and graph mode; compile times and peak RSS.

    python bench/tiny.py [--steps 10] [--json out.json]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measure(job, mode, steps, model_dir, extra):
    """Runs in the child process; prints a JSON line."""
    sys.path.insert(0, REPO)
    import numpy as np
    import mindspore as ms
    from tuneavideo_ms import runtime

    runtime.setup("CPU", mode)
    result = {}
    if job == "forward":
        from tuneavideo_ms.models import UNet3DConditionModel
        unet = UNet3DConditionModel.from_pretrained_2d(model_dir, subfolder="unet")
        x = ms.Tensor(np.random.randn(1, 4, 4, 8, 8).astype(np.float32))
        ctx = ms.Tensor(np.random.randn(1, 77, 32).astype(np.float32))
        start = time.perf_counter()
        unet(x, 10, ctx).asnumpy()
        result["first call (s)"] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            unet(x, 10, ctx).asnumpy()
        result["per call (s)"] = (time.perf_counter() - start) / steps
    elif job == "edit":
        from tuneavideo_ms.data import read_video
        from tuneavideo_ms.inversion import ddim_inversion
        from tuneavideo_ms.pipelines import TuneAVideoPipeline
        pipe = TuneAVideoPipeline.from_pretrained(model_dir)
        pixels = read_video(os.path.join(REPO, "tuneavideo_ms", "assets", "man-skiing.mp4"), 4, 64, 64)
        for run in ("first", "second"):
            start = time.perf_counter()
            latents = pipe.encode_video(pixels[None])
            noise = ddim_inversion(pipe, pipe.scheduler, latents, steps)[-1]
            mid = time.perf_counter()
            pipe("a man is surfing", video_length=4, height=64, width=64, num_inference_steps=steps,
                 latents=noise)
            end = time.perf_counter()
            result[f"{run}: inversion (s)"] = mid - start
            result[f"{run}: sampling (s)"] = end - mid
    else:
        from tuneavideo_ms import training
        from tuneavideo_ms.config import load_config
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            config = load_config(os.path.join(REPO, "tuneavideo_ms", "demo.yaml"), [
                f"pretrained_model_path={model_dir}", f"output_dir={out}", f"mode={mode}",
                f"train_data.video_path={os.path.join(REPO, 'tuneavideo_ms', 'assets', 'man-skiing.mp4')}",
                f"max_train_steps={steps + 1}", "checkpointing_steps=100000", "validation_data.prompts=[]",
                f"gradient_checkpointing={extra}"])
            training.main(config)
            result["whole run (s)"] = time.perf_counter() - start
            times = []
            with open(os.path.join(out, "train.log")) as f:
                for line in f:
                    if " step " in line and " loss " in line:
                        times.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                                     + int(line[20:23]) / 1000)
            result["per step after the first (s)"] = (times[-1] - times[0]) / (len(times) - 1)
    result["peak RSS (MB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job, mode, model_dir, extra = args.child
        return _measure(job, mode, args.steps, model_dir, extra)

    sys.path.insert(0, REPO)
    from tuneavideo_ms import tiny
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny.build_tiny_sd(os.path.join(tmp, "tiny-sd"))
        for job, mode, extra in [("forward", "pynative", ""), ("forward", "graph", ""),
                                 ("edit", "pynative", ""), ("edit", "graph", ""),
                                 ("train", "graph", "False"), ("train", "graph", "True")]:
            start = time.perf_counter()
            # first calls compile: the compile cache stays off (bench/compile.py measures loading)
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", job, mode,
                                  model_dir, extra or "-"], capture_output=True, text=True,
                                 env=dict(os.environ, TUNEAVIDEO_COMPILE_CACHE="off"))
            wall = time.perf_counter() - start
            line = [text for text in out.stdout.splitlines() if text.startswith("RESULT ")]
            if not line:
                raise RuntimeError(f"{job} {mode} failed:\n{out.stderr[-2000:]}")
            result = {k: v for k, v in json.loads(line[0][7:]).items() if v is not None}
            name = f"{job} ({mode}{', checkpointing' if extra == 'True' else ''})"
            rows.append({"job": name, "process wall (s)": wall, **result})
    print(f"tiny model, 4 frames of 64x64 (8x8 latents), {args.steps} steps, {os.cpu_count()} CPU cores\n")
    for row in rows:
        figures = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                            if k != "job")
        print(f"| {row['job']} | {figures} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
