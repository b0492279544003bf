"""`python -m tuneavideo_ms`: the demo. Builds the tiny Stable Diffusion
(random weights), tunes it on the bundled clip with demo.yaml (beside this file),
inverts the clip and samples two edited prompts. The videos are noise (the
weights are random); every step of the real job runs."""
import argparse
import logging
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_CONFIG = os.path.join(HERE, "demo.yaml")
DEMO_CLIP = os.path.join(HERE, "assets", "man-skiing.mp4")


def main():
    parser = argparse.ArgumentParser(prog="python -m tuneavideo_ms", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo", help="where the run and its edited videos go")
    parser.add_argument("--model_dir", default="outputs/tiny-sd", help="where the tiny model is written")
    parser.add_argument("overrides", nargs="*", help="key=value settings over the demo's config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from . import tiny, training
    from .config import load_config

    if not os.path.isdir(args.model_dir):
        tiny.build_tiny_sd(args.model_dir)
        logging.getLogger(__name__).info("tiny Stable Diffusion written to %s", args.model_dir)
    config = load_config(DEMO_CONFIG, [f"pretrained_model_path={os.path.abspath(args.model_dir)}",
                                       f"train_data.video_path={DEMO_CLIP}",
                                       f"output_dir={os.path.abspath(args.output_dir)}", *args.overrides])
    output_dir = training.main(config)
    samples = os.path.join(output_dir, "samples")
    print(f"\ndemo done: tuned UNet in {os.path.join(output_dir, 'unet')}; "
          f"edited videos (GIF/MP4) in {samples}:")
    for root, _, files in sorted(os.walk(samples)):
        for name in sorted(files):
            print("  " + os.path.join(root, name))


if __name__ == "__main__":
    main()
