"""Tune a video UNet on one clip.

    tuneavideo-train --config configs/man-skiing.yaml [key=value ...]   (or python tools/train.py ...)

Overrides are OmegaConf dot-lists, e.g. max_train_steps=100 train_data.n_sample_frames=8.
"""
import argparse
import logging
import os
import sys

from ..config import check_paths, load_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="a YAML config (the original's keys; configs/ has examples)")
    parser.add_argument("overrides", nargs="*", help="key=value settings over the config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        check_paths(config)  # before MindSpore's import, so a wrong path costs no time
        from .. import training
        output_dir = training.main(config)
    except (ValueError, OSError) as e:  # bad input: a config key, a path, a clip, a weight file
        sys.exit(f"{parser.prog}: {e}")
    print(f"tuned UNet: {os.path.join(output_dir, 'unet')}\n"
          f"validation samples: {os.path.join(output_dir, 'samples')}")


if __name__ == "__main__":
    main()
