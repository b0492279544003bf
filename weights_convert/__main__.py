"""python -m weights_convert --src SRC --dst DST [--to mindspore|diffusers] [--dtype fp32|fp16|bf16]
[--overwrite]

SRC: a diffusers pipeline folder, a model folder (2D UNet, VAE, text encoder,
tuned Tune-A-Video UNet), a single-file Stable Diffusion checkpoint (LDM
layout, .ckpt or .safetensors), or a folder this tool wrote."""
import argparse
import logging
import os
import sys

from .convert import DTYPES, convert


def main(argv=None):
    # run as `python -m weights_convert`, argparse would call itself __main__.py
    prog = "python -m weights_convert" if os.path.basename(sys.argv[0]) == "__main__.py" else None
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--to", default="mindspore", choices=["mindspore", "diffusers"])
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: keep the source's")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--variant", default=None, help="convert the weights of this variant (e.g. fp16: "
                        "*.fp16.safetensors); default: the plain files, variants left out")
    single = parser.add_argument_group("single-file (LDM) checkpoints")
    single.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"],
                        help="v_prediction for the SD 2.x 768 models")
    single.add_argument("--image-size", type=int, default=None, help="default 512; 768 for SD 2.x v-models")
    single.add_argument("--upcast-attention", action="store_true", help="as SD 2.1 768 runs its attention")
    single.add_argument("--tokenizer", default=None, help="a CLIP tokenizer folder to copy to tokenizer/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        summary = convert(args.src, args.dst, args.to, args.dtype, args.overwrite, args.prediction_type,
                          args.image_size, args.upcast_attention, args.tokenizer, args.variant)
    except (ValueError, OSError) as e:
        sys.exit(f"weights_convert: {e}")
    print(f"{summary['kind']}: {summary['tensors']} tensors, {summary['bytes'] / 2 ** 20:.1f} MB, "
          f"{summary['seconds']:.1f} s -> {args.dst}")


if __name__ == "__main__":
    main()
