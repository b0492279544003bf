"""The whole edit, this project against the original PyTorch pipeline, side by side in one run; and the
tiny model's demo and `tools/infer.py`, first run and rerun.

`mid` edit: Stable Diffusion's topology at smaller widths (bench/unet.py's `mid` UNet, a VAE with
64-256 channels, a 12-layer 768-wide CLIP text encoder), random weights written once by PyTorch and
loaded by both sides. 8 frames of 256x256 of the bundled clip: encode, DDIM-invert (10 steps), sample two
prompts (10 steps each, guidance 12.5), decode. The PyTorch side is the tests' oracle (diffusers' UNet
with Tune-A-Video's attention, tests/torch_reference.py), diffusers' VAE and DDIM scheduler,
transformers' text encoder and the original's inversion loop. Each run is a fresh process pinned to
--threads: "first run" with an empty compile cache, "rerun" with the cache the first run filled. The
time is the job's own (loading the models and the whole edit, not the interpreter's start); peak memory
is the summed PSS of the job's processes (bench/unet.py). The last row is the largest difference between
the two sides' videos (pixels in [0, 1]).

Samplers: a DDIM 50 + 50 edit against a DPM-Solver++ 20 + 20 edit of the same clip and prompts.

    python bench/edit.py [--threads 2] [--steps 10] [--skip mid|tiny|samplers]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet import MID, REPO, run_python  # noqa: E402

CLIP = os.path.join(REPO, "tuneavideo_ms", "assets", "man-skiing.mp4")
FRAMES, SIZE, GUIDANCE = 8, 256, 12.5
PROMPTS = ("spider man is skiing on the beach, cartoon style",
           "a man, wearing pink clothes, is skiing at sunset")
VAE = dict(block_out_channels=[64, 128, 256, 256], layers_per_block=2, latent_channels=4, norm_num_groups=32,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           sample_size=SIZE)
TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            projection_dim=768)


def write_model(folder):
    """The `mid` Stable Diffusion folder, its UNet as the PyTorch Tune-A-Video writes a tuned one."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from torch_reference import VideoUNetOracle, make_unet_2d
    from tuneavideo_ms import tiny
    from tuneavideo_ms.layout import model_index, write_json

    torch.manual_seed(0)
    VideoUNetOracle(make_unet_2d(MID), FRAMES).save_original_format(os.path.join(folder, "unet"))
    AutoencoderKL(**VAE).save_pretrained(os.path.join(folder, "vae"))
    text = {k: v for k, v in tiny.TEXT_ENCODER_CONFIG.items() if k not in ("architectures", "model_type")}
    CLIPTextModel(CLIPTextConfig(**dict(text, **TEXT))).save_pretrained(os.path.join(folder, "text_encoder"))
    tiny.write_tokenizer(os.path.join(folder, "tokenizer"))
    os.makedirs(os.path.join(folder, "scheduler"))
    write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), tiny.SCHEDULER_CONFIG)
    write_json(os.path.join(folder, "model_index.json"), model_index("TuneAVideoPipeline"))


def edit_torch(folder, threads, steps, out):
    """The original's edit: its inversion loop (next_step), diffusers' DDIM sampling with guidance."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from torch_reference import VideoUNetOracle, make_unet_2d
    from tuneavideo_ms.data import read_video

    torch.set_num_threads(threads)
    start = time.perf_counter()
    unet = VideoUNetOracle(make_unet_2d(MID), FRAMES).eval()
    unet.unet.load_state_dict(torch.load(os.path.join(folder, "unet", "diffusion_pytorch_model.bin")))
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).eval()
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    scheduler = DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
    scale = 0.18215

    def embed(prompt):
        ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return text_encoder(ids.input_ids)[0]

    with torch.no_grad():
        frames = torch.from_numpy(read_video(CLIP, FRAMES, SIZE, SIZE)).transpose(0, 1)
        latents = torch.cat([vae.encode(frames[i:i + 4]).latent_dist.mean for i in range(0, FRAMES, 4)])
        latents = latents[None].transpose(1, 2) * scale
        scheduler.set_timesteps(steps)
        uncond = embed("")
        for i in range(steps):  # the original's ddim_inversion and next_step
            t = scheduler.timesteps[len(scheduler.timesteps) - i - 1]
            eps = unet(latents, t, uncond)
            current, target = min(int(t) - 1000 // steps, 999), int(t)
            alpha = scheduler.alphas_cumprod[current] if current >= 0 else scheduler.final_alpha_cumprod
            alpha_next = scheduler.alphas_cumprod[target]
            x0 = (latents - (1 - alpha) ** 0.5 * eps) / alpha ** 0.5
            latents = alpha_next ** 0.5 * x0 + (1 - alpha_next) ** 0.5 * eps
        videos = []
        for prompt in PROMPTS:
            context = torch.cat([uncond, embed(prompt)])
            x = latents
            scheduler.set_timesteps(steps)
            for t in scheduler.timesteps:
                noise_uncond, noise_cond = unet(torch.cat([x, x]), t, context).chunk(2)
                x = scheduler.step(noise_uncond + GUIDANCE * (noise_cond - noise_uncond), t, x).prev_sample
            flat = (x / scale).transpose(1, 2).reshape(FRAMES, 4, SIZE // 8, SIZE // 8)
            video = torch.cat([vae.decode(flat[i:i + 4]).sample for i in range(0, FRAMES, 4)])
            videos.append((video / 2 + 0.5).clamp(0, 1).transpose(0, 1).numpy())
    seconds = time.perf_counter() - start
    np.save(out, np.stack(videos))
    return seconds


def edit_mindspore(folder, threads, steps, out):
    import mindspore as ms
    import numpy as np
    from tuneavideo_ms import runtime
    from tuneavideo_ms.data import read_video
    from tuneavideo_ms.editing import invert_clip
    from tuneavideo_ms.pipelines import TuneAVideoPipeline
    from tuneavideo_ms.runtime import cpu_kernels

    runtime.setup("CPU", "graph")
    ms.device_context.cpu.op_tuning.threads_num(threads)
    cpu_kernels.set_threads(threads)
    start = time.perf_counter()
    pipe = TuneAVideoPipeline.from_pretrained(folder)
    latents = pipe.encode_video(read_video(CLIP, FRAMES, SIZE, SIZE)[None])
    noise = invert_clip(pipe, latents, steps)
    videos = [pipe(prompt, latents=noise, video_length=FRAMES, height=SIZE, width=SIZE,
                   num_inference_steps=steps, guidance_scale=GUIDANCE).videos[0] for prompt in PROMPTS]
    seconds = time.perf_counter() - start
    np.save(out, np.stack(videos))
    return seconds


def _job(framework, folder, threads, steps, out, cache):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO, TUNEAVIDEO_COMPILE_CACHE=cache)
    code = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); import edit, json; "
            f"s = edit.edit_{framework}({folder!r}, {threads}, {steps}, {out!r}); "
            "print('RESULT', json.dumps(s))")
    return run_python(code, env)


def _command(args, cache):
    """Runs a command of this project in a fresh process; returns (seconds, graphs compiled, loaded)."""
    env = dict(os.environ, PYTHONPATH=REPO, TUNEAVIDEO_COMPILE_CACHE=cache)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return seconds, done.stderr.count("(first run only: the compile cache keeps it)"), done.stderr.count(
        ", compiled by an earlier run")


def bench_mid(work, threads, steps):
    import numpy as np
    folder = os.path.join(work, "mid-sd")
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {REPO!r}); "
                    f"sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); import edit; "
                    f"edit.write_model({folder!r})"], check=True, capture_output=True)
    cache = os.path.join(work, "graphs")
    rows = {}
    for run in ("first run", "rerun"):
        torch_out, ours_out = os.path.join(work, "torch.npy"), os.path.join(work, "ours.npy")
        rows[run] = (_job("torch", folder, threads, steps, torch_out, cache),
                     _job("mindspore", folder, threads, steps, ours_out, cache))
    difference = float(np.abs(np.load(torch_out) - np.load(ours_out)).max())
    print(f"\n`mid` edit: {FRAMES} frames of {SIZE}x{SIZE}, {steps} inversion steps, "
          f"2 prompts x {steps} steps, {threads} threads\n")
    print("| row | PyTorch | this project | ratio |\n|---|---|---|---|")
    for run, ((t_s, t_mem), (o_s, o_mem)) in rows.items():
        print(f"| {run}: edit (s) | {t_s:.1f} | {o_s:.1f} | {o_s / t_s:.2f} |")
        print(f"| {run}: peak memory (GiB) | {t_mem:.2f} | {o_mem:.2f} | {o_mem / t_mem:.2f} |")
    print(f"| largest difference of the videos | | {difference:.1e} | |")


def bench_tiny(work):
    model = os.path.join(work, "tiny-sd")
    demo = ["-m", "tuneavideo_ms", "--model_dir", model, "--output_dir", os.path.join(work, "demo")]
    infer = [os.path.join(REPO, "tools", "infer.py"), "--pretrained_model_path", model, "--unet",
             os.path.join(work, "demo", "unet"), "--video", CLIP, "--prompts", *PROMPTS,
             "--video_length", "4", "--width", "64", "--height", "64", "--num_inv_steps", "10",
             "--num_inference_steps", "10", "--output_dir", os.path.join(work, "infer")]
    print("\nThe tiny model (the demo's: 20 steps of tuning, inversion and two prompts at 4 frames of 64x64; "
          "`tools/infer.py` on its tuned UNet), whole process\n")
    print("| command | first run (s) | graphs compiled | rerun (s) | graphs compiled | graphs loaded | "
          "rerun / first |\n|---|---|---|---|---|---|---|")
    for name, args in (("demo", demo), ("tools/infer.py", infer)):
        cache = os.path.join(work, f"graphs-{os.path.basename(args[0])}")  # each command its own
        first, compiled, _ = _command(args, cache)
        again, recompiled, loaded = _command(args, cache)
        print(f"| {name} | {first:.1f} | {compiled} | {again:.1f} | {recompiled} | {loaded} | "
              f"{again / first:.2f} |")


SAMPLER_RUNS = (("ddim", 50), ("dpmsolver++", 20))


def bench_samplers(work):
    """A DDIM 50 + 50 edit against a DPM-Solver++ 20 + 20 one (`tools/infer.py`, the tiny model, its graphs
    cached by a first run), and how well each pair of inversion and sampling gives the clip back on the
    oracle denoiser of tests/test_samplers.py."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import numpy as np
    from test_samplers import reconstruction_error
    from tuneavideo_ms import tiny
    model = os.path.join(work, "tiny-sd")
    if not os.path.isdir(model):
        tiny.build_tiny_sd(model)
    rng = np.random.default_rng(0)
    clean, noise = rng.standard_normal((2, 1, 4, 4, 8, 8))
    print("\nSamplers: `tools/infer.py` on the tiny model (4 frames of 64x64, two prompts, graphs cached), "
          "whole process; the oracle's reconstruction error (largest, of latents of unit scale)\n")
    print("| sampler | inversion + sampling steps | rerun (s) | oracle error, epsilon | oracle error, v |")
    print("|---|---|---|---|---|")
    for name, steps in SAMPLER_RUNS:
        args = [os.path.join(REPO, "tools", "infer.py"), "--pretrained_model_path", model, "--video", CLIP,
                "--prompts", *PROMPTS, "--video_length", "4", "--width", "64", "--height", "64",
                "--scheduler", name, "--num_inv_steps", str(steps), "--num_inference_steps", str(steps),
                "--output_dir", os.path.join(work, f"infer-{name}")]
        cache = os.path.join(work, f"graphs-{name}")
        _command(args, cache)
        seconds = _command(args, cache)[0]
        errors = [reconstruction_error(name, kind, steps, clean, noise)
                  for kind in ("epsilon", "v_prediction")]
        print(f"| {name} | {steps} + {steps} x 2 | {seconds:.1f} | {errors[0]:.1e} | {errors[1]:.1e} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", nargs="*", default=[], choices=["mid", "tiny", "samplers"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if "tiny" not in args.skip:
            bench_tiny(work)
        if "samplers" not in args.skip:
            bench_samplers(work)
        if "mid" not in args.skip:
            bench_mid(work, args.threads, args.steps)


if __name__ == "__main__":
    main()
