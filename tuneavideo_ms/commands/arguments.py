"""What the command lines share: argparse's help layout and number arguments with a lower bound."""
import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The defaults shown, the description's layout kept."""


def number(kind, minimum):
    """An argparse type: a `kind` (int or float) of at least `minimum`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            whole = "whole " if kind is int else ""
            raise argparse.ArgumentTypeError(f"{text!r} is not a {whole}number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def add_pickscore_arguments(p):
    """--pickscore_model_path and --pickscore_processor_path (metrics.VideoEvaluator's PickScore model)."""
    p.add_argument("--pickscore_model_path", default=None,
                   help="score PickScore too, with this model folder or Hub id (yuvalkirstain/PickScore_v1); "
                        "needs --clip_model_path")
    p.add_argument("--pickscore_processor_path", default=None,
                   help="the PickScore model's processor, when its folder has none "
                        "(laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")


def add_device_arguments(p):
    """--device and --mode, what runtime.setup takes."""
    p.add_argument("--device", default=None, choices=["Ascend", "GPU", "CPU"],
                   help="default: the first available")
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
