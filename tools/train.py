"""Tune a video UNet on one clip.

    python tools/train.py --config configs/man-skiing.yaml [key=value ...]

Overrides are OmegaConf dot-lists, e.g. max_train_steps=100 train_data.n_sample_frames=8.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tuneavideo_ms.config import check_paths, load_config  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value settings over the config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        check_paths(config)  # before MindSpore's import, so a wrong path costs no time
        from tuneavideo_ms import training
        output_dir = training.main(config)
    except (ValueError, OSError) as e:  # bad input: a config key, a path, a clip, a weight file
        sys.exit(f"train.py: {e}")
    print(f"tuned UNet: {os.path.join(output_dir, 'unet')}\nvalidation samples: {os.path.join(output_dir, 'samples')}")


if __name__ == "__main__":
    main()
