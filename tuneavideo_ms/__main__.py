"""`python -m tuneavideo_ms`: builds the tiny video UNet and runs it once."""
import argparse
import logging
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="Ascend, GPU or CPU (default: the first available)")
    parser.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import mindspore as ms
    from . import backend, tiny
    from .models import UNet3DConditionModel

    backend.setup(args.device, args.mode)
    unet = UNet3DConditionModel(**tiny.UNET_CONFIG)
    rng = np.random.default_rng(0)
    sample = ms.Tensor(rng.standard_normal((1, 4, args.frames, 8, 8), dtype=np.float32))
    context = ms.Tensor(rng.standard_normal((1, 77, tiny.UNET_CONFIG["cross_attention_dim"]), dtype=np.float32))
    start = time.time()
    out = unet(sample, 10, context)
    print(f"tiny video UNet: input {tuple(sample.shape)} -> output {tuple(out.shape)} "
          f"({args.mode} mode, {time.time() - start:.1f} s including compilation)")


if __name__ == "__main__":
    main()
