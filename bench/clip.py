"""The benchmark's CLIP image encoder on CPU, this project against transformers' PyTorch CLIPModel, side by
side in one run: openai/clip-vit-large-patch14's architecture (ViT-L/14 at 224, the frame consistency and
text alignment model) and PickScore's (ViT-H/14), random weights (nothing is downloaded), the same weights
in both, fp32, same thread count, each job in its own process (peak memory: bench/unet.py's run_python).

    python bench/clip.py [--models vit-l vit-h] [--frames 8] [--threads 2] [--repeat 2] [--json out.json]

Rows: seconds per frame of get_image_features on a batch of --frames frames (best of --repeat calls after a
warm-up call, which is where MindSpore compiles), the GFLOP per frame (counted with PyTorch's
FlopCounterMode) and the peak memory. A 24-frame video costs 24 times the per-frame time per model.
"""
import argparse
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
from unet import best_of, run_python  # noqa: E402

MODELS = {
    "vit-l": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  patch_size=14, image_size=224, projection_dim=768),
    "vit-h": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"),
}


def save_model(name, folder):
    """A random CLIPModel with `name`'s vision tower (a small text tower) saved by transformers."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    vision = dict(MODELS[name])
    projection = vision.pop("projection_dim")
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)
    CLIPModel(config).save_pretrained(folder)


def _pixels(frames):
    import numpy as np
    return np.random.default_rng(0).standard_normal((frames, 3, 224, 224), dtype=np.float32)


def run_torch(folder, frames, threads, repeat):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPModel
    torch.set_num_threads(threads)
    model = CLIPModel.from_pretrained(folder).eval()
    pixels = torch.from_numpy(_pixels(frames))

    def call():
        with torch.no_grad():
            model.get_image_features(pixel_values=pixels)
    seconds = best_of(call, repeat)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.get_image_features(pixel_values=pixels[:1])
    return {"seconds": seconds / frames, "gflop": counter.get_total_flops() / 1e9}


def run_mindspore(folder, frames, threads, repeat):
    import mindspore as ms
    from tuneavideo_ms import runtime
    from tuneavideo_ms.models.clip import CLIPModel
    from tuneavideo_ms.pipelines import ModelGraph
    from tuneavideo_ms.runtime import cpu_kernels
    runtime.setup("CPU", "graph")
    ms.device_context.cpu.op_tuning.threads_num(threads)
    cpu_kernels.set_threads(threads)
    encode = ModelGraph(CLIPModel.from_pretrained(folder), "get_image_features", "the CLIP image encoder")
    pixels = ms.Tensor(_pixels(frames))
    return {"seconds": best_of(lambda: encode(pixels).asnumpy(), repeat) / frames}


def _child(framework, folder, frames, threads, repeat):
    call = f"run_{framework}({folder!r}, {frames}, {threads}, {repeat})"
    code = (f"import sys; sys.argv = ['clip.py']; sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); "
            f"import clip, json; print('RESULT', json.dumps(clip.{call}))")
    return run_python(code, dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO,
                                 TUNEAVIDEO_COMPILE_CACHE="off"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name in args.models:
            folder = os.path.join(root, name)
            save_model(name, folder)
            for framework in ("torch", "mindspore"):
                print(f"{name} {framework} ...", file=sys.stderr, flush=True)
                results[f"{name}/{framework}"] = _child(framework, folder, args.frames, args.threads,
                                                        args.repeat)
    print(f"CPU, {args.threads} threads, fp32, {args.frames} frames of 224x224 per call, "
          f"best of {args.repeat} after a warm-up call\n")
    print("| model | GFLOP per frame | PyTorch s/frame | this project s/frame | ratio | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        torch_result, ours = results[f"{name}/torch"], results[f"{name}/mindspore"]
        if not torch_result or not ours:
            print(f"| {name} | out of memory |")
            continue
        (t, t_peak), (m, m_peak) = torch_result, ours
        print(f"| {name} | {t['gflop']:.0f} | {t['seconds']:.3f} | {m['seconds']:.3f} | "
              f"{m['seconds'] / t['seconds']:.2f}x | {t_peak:.2f} / {m_peak:.2f} |")
    if args.json:
        from tuneavideo_ms.layout import write_json
        write_json(args.json, results)


if __name__ == "__main__":
    main()
