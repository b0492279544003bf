"""python -m weights_convert --src SRC --dst DST [--to mindspore|diffusers] [--dtype fp32|fp16] [--overwrite]"""
import argparse
import logging
import sys

from .convert import convert


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--to", default="mindspore", choices=["mindspore", "diffusers"])
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16"])
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        summary = convert(args.src, args.dst, args.to, args.dtype, args.overwrite)
    except (ValueError, OSError) as e:
        sys.exit(f"weights_convert: {e}")
    print(f"{summary['kind']}: {summary['tensors']} tensors, {summary['bytes'] / 2 ** 20:.1f} MB, "
          f"{summary['seconds']:.1f} s -> {args.dst}")


if __name__ == "__main__":
    main()
