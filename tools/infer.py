"""Edit a clip with text: DDIM-invert it with a (tuned) video UNet, then sample
each prompt from the inverted noise. Writes <prompt>.gif/.mp4 and grid.gif.

    python tools/infer.py --pretrained_model_path SD_DIR [--unet OUTPUT_DIR/unet] \
        --video clip.mp4 --prompts "a man is surfing" "spider man is skiing" --output_dir outputs/edit
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tuneavideo_ms import backend  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_model_path", required=True, help="Stable Diffusion folder (diffusers layout)")
    p.add_argument("--unet", default=None, help="a tuned video UNet folder (default: inflate the folder's UNet)")
    p.add_argument("--video", default=None, help="the clip to edit; without it, sample from random noise")
    p.add_argument("--inv_latents", default=None, help="a saved inverted noise (.npy) to reuse instead of --video")
    p.add_argument("--prompts", nargs="+", required=True)
    p.add_argument("--negative_prompt", default=None)
    p.add_argument("--output_dir", default="outputs/edit")
    p.add_argument("--video_length", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--sample_start_idx", type=int, default=0)
    p.add_argument("--sample_frame_rate", type=int, default=1)
    p.add_argument("--num_inv_steps", type=int, default=50)
    p.add_argument("--num_inference_steps", type=int, default=50)
    p.add_argument("--guidance_scale", type=float, default=12.5)
    p.add_argument("--seed", type=int, default=33)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--device", default=None, help="Ascend, GPU or CPU (default: the first available)")
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    backend.setup(args.device, args.mode)

    import numpy as np
    from tuneavideo_ms.data import read_video
    from tuneavideo_ms.editing import invert_clip, sample_edits
    from tuneavideo_ms.models import UNet3DConditionModel
    from tuneavideo_ms.pipelines import TuneAVideoPipeline

    pixels = None
    if args.video:  # read the clip first: a bad clip should fail before any model loads
        pixels = read_video(args.video, args.video_length, args.width, args.height, args.sample_start_idx,
                            args.sample_frame_rate)
    unet = UNet3DConditionModel.from_pretrained(args.unet) if args.unet else None
    pipe = TuneAVideoPipeline.from_pretrained(args.pretrained_model_path, unet=unet)
    latents = None
    if args.inv_latents:
        latents = np.load(args.inv_latents)
    elif pixels is not None:
        clip_latents = pipe.encode_video(pixels.transpose(1, 0, 2, 3)[None], deterministic=True)
        latents = invert_clip(pipe, clip_latents, args.num_inv_steps,
                              save_path=os.path.join(args.output_dir, "inv_latents.npy"))
    paths = sample_edits(pipe, args.prompts, args.output_dir, latents=latents, fps=args.fps,
                         video_length=args.video_length, height=args.height, width=args.width,
                         num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                         negative_prompt=args.negative_prompt, seed=args.seed)
    print("\n".join(["edited videos:"] + paths))


if __name__ == "__main__":
    main()
