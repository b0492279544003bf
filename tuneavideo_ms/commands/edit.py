"""Edit a clip with text: DDIM-invert it with a (tuned) video UNet, then sample
each prompt from the inverted noise. Writes <prompt>.gif/.mp4, grid.gif,
prompts.json (file name -> prompt), inv_latents.npy and, with --clip_model_path,
metrics.json (the benchmark's metrics of each edit).

    tuneavideo-edit --pretrained_model_path SD_DIR_OR_HUB_ID [--unet OUTPUT_DIR/unet] \\
        --video clip.mp4 --prompts "a man is surfing" "spider man is skiing" --output_dir outputs/edit

(or python tools/infer.py with the same options)
"""
import argparse
import logging
import os
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from ..sampling import SAMPLERS
from .arguments import HelpFormatter, add_device_arguments, add_pickscore_arguments, number


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pretrained_model_path", required=True, help="Stable Diffusion folder or Hub id")
    p.add_argument("--unet", default=None,
                   help="a tuned video UNet folder; without it, the folder's UNet inflated")
    p.add_argument("--video", default=None, help="the clip to edit; without it, sample from random noise")
    p.add_argument("--inv_latents", default=None,
                   help="a saved inverted noise (.npy) to reuse instead of --video")
    p.add_argument("--prompts", nargs="+", required=True)
    p.add_argument("--negative_prompt", default=None)
    p.add_argument("--output_dir", default="outputs/edit")
    p.add_argument("--video_length", type=number(int, 1), default=8)
    p.add_argument("--width", type=number(int, 8), default=512)
    p.add_argument("--height", type=number(int, 8), default=512)
    p.add_argument("--sample_start_idx", type=number(int, 0), default=0)
    p.add_argument("--sample_frame_rate", type=number(int, 1), default=1)
    p.add_argument("--scheduler", default="ddim", choices=list(SAMPLERS),
                   help="the sampler: ddim (the original's), or mindone's DPM-Solver++ (inverted with its "
                        "own inverse: 20 steps do) or Euler (inverted with DDIM)")
    p.add_argument("--num_inv_steps", type=number(int, 1), default=50)
    p.add_argument("--num_inference_steps", type=number(int, 1), default=50)
    p.add_argument("--guidance_scale", type=number(float, 0), default=12.5)
    p.add_argument("--seed", type=number(int, 0), default=33)
    p.add_argument("--fps", type=number(int, 1), default=8)
    p.add_argument("--clip_model_path", default=None,
                   help="score each edit with the benchmark's CLIP metrics (a CLIP model folder or Hub id, "
                        "e.g. openai/clip-vit-large-patch14): output_dir/metrics.json")
    add_pickscore_arguments(p)
    add_device_arguments(p)
    return p.parse_args(argv)


def check_args(args):
    """The paths and sizes, before anything loads: a mistake costs no model load or compile."""
    import numpy as np
    from ..data import check_frame_size
    from ..hub import is_hub_id

    check_frame_size(args.height, args.width)
    if not os.path.isdir(args.pretrained_model_path) and not is_hub_id(args.pretrained_model_path):
        raise FileNotFoundError(f"--pretrained_model_path {args.pretrained_model_path}: not a folder "
                                "(nor a Hub id such as CompVis/stable-diffusion-v1-4)")
    if args.unet and not os.path.isdir(args.unet):
        raise FileNotFoundError(f"--unet {args.unet}: not a folder "
                                "(a tuned UNet is output_dir/unet of a run)")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise NotADirectoryError(f"--output_dir {args.output_dir} is a file; it must be a folder")
    from ..metrics import check_metric_models
    check_metric_models(args.clip_model_path, args.pickscore_model_path, args.pickscore_processor_path)
    if args.inv_latents:
        if not os.path.isfile(args.inv_latents):
            raise FileNotFoundError(f"--inv_latents {args.inv_latents}: file not found")
        with open(args.inv_latents, "rb") as f:
            numpy_file = f.read(6) == b"\x93NUMPY"
        try:
            if not numpy_file:
                raise ValueError("not a .npy file")
            latents = np.load(args.inv_latents, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--inv_latents {args.inv_latents}: not an array saved by infer.py or training "
                             f"(inv_latents.npy, inv_latents/ddim_latent-<step>.npy): {e}") from None
        expected = (4, args.video_length, args.height // 8, args.width // 8)
        if latents.ndim != 5 or latents.shape[1:] != expected:
            raise ValueError(f"--inv_latents {args.inv_latents} has shape {latents.shape}; "
                             f"--video_length, --height and --width ask for (1,) + {expected}")
        return latents
    return None


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            run(args)
    except (ValueError, OSError) as e:  # bad input: a path, a size, a weight file; the message says which
        sys.exit(f"{os.path.basename(sys.argv[0])}: {e}")


def run(args):
    from ..data import read_video
    latents = check_args(args)
    pixels = None
    if args.video and latents is None:  # read the clip first: a bad clip should fail before any model loads
        pixels = read_video(args.video, args.video_length, args.width, args.height, args.sample_start_idx,
                            args.sample_frame_rate)

    from .. import runtime
    from ..editing import invert_clip, sample_edits
    from ..models import UNet3DConditionModel
    from ..pipelines import TuneAVideoPipeline
    from ..sampling import make_scheduler

    runtime.setup(args.device, args.mode)
    evaluate = None
    if args.clip_model_path:
        from ..metrics import VideoEvaluator
        evaluate = VideoEvaluator(args.clip_model_path, args.pickscore_model_path,
                                  args.pickscore_processor_path)
    unet = UNet3DConditionModel.from_pretrained(args.unet) if args.unet else None
    pipe = TuneAVideoPipeline.from_pretrained(args.pretrained_model_path, unet=unet)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler)
    if pixels is not None:
        clip_latents = pipe.encode_video(pixels[None], deterministic=True)
        latents = invert_clip(pipe, clip_latents, args.num_inv_steps,
                              save_path=os.path.join(args.output_dir, "inv_latents.npy"))
    paths = sample_edits(pipe, args.prompts, args.output_dir, latents=latents, fps=args.fps,
                         video_length=args.video_length, height=args.height, width=args.width,
                         num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                         negative_prompt=args.negative_prompt, seed=args.seed, evaluate=evaluate)
    print("\n".join(["edited videos:"] + paths))


if __name__ == "__main__":
    main()
