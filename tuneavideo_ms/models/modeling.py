"""Model folders in the diffusers layout: config.json plus one weight file."""
import json
import os

from ..atomic import atomic_dir
from ..weights import WeightsError, find_weight_file, iter_tensors, load_into, save_safetensors, state_dict

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.ckpt")


class Config(dict):
    """A model config: a dict whose keys also read as attributes, as diffusers' `model.config.x`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def model_folder(path, subfolder=None):
    folder = os.path.join(path, subfolder) if subfolder else path
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    return folder


def read_config(folder):
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.json not found in {folder}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_weights(model, folder, weight_names=WEIGHT_NAMES, may_be_missing=lambda name: False):
    path = find_weight_file(folder, weight_names)
    load_into(model, dict(iter_tensors(path)), source=path, may_be_missing=may_be_missing)
    return path


def save_model(model, save_directory, config):
    """config.json + diffusion_pytorch_model.safetensors under the diffusers names, atomically."""
    with atomic_dir(save_directory) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(dict(config), f, indent=2, sort_keys=True)
        save_safetensors(os.path.join(tmp, WEIGHT_NAMES[0]), state_dict(model))


__all__ = ["Config", "WeightsError", "model_folder", "read_config", "load_weights", "save_model"]
