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


def load_weights(model, folder, weight_names=WEIGHT_NAMES, may_be_missing=lambda name: False, ignored=()):
    """Loads `folder`'s weight file into `model`; tensors named in `ignored` are skipped."""
    path = find_weight_file(folder, weight_names)
    state = {name: tensor for name, tensor in iter_tensors(path) if name not in ignored}
    load_into(model, state, source=path, may_be_missing=may_be_missing)
    return path


class ModelMixin:
    """from_pretrained / save_pretrained for cells built from a config dict (`self.config`)."""

    weight_names = WEIGHT_NAMES  # looked for in this order; the first is what save_pretrained writes
    ignored_weights = ()  # buffers some exports carry that are not parameters

    @classmethod
    def from_pretrained(cls, pretrained_model_path, subfolder=None):
        """Loads a model folder: config.json and a weight file in any format weights.py reads."""
        folder = model_folder(pretrained_model_path, subfolder)
        model = cls(**read_config(folder))
        load_weights(model, folder, cls.weight_names, ignored=cls.ignored_weights)
        return model

    def save_pretrained(self, save_directory):
        """config.json + the weights (safetensors) under the diffusers names, atomically."""
        with atomic_dir(save_directory) as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(dict(self.config, _class_name=type(self).__name__), f, indent=2, sort_keys=True)
            save_safetensors(os.path.join(tmp, self.weight_names[0]), state_dict(self))


__all__ = ["Config", "ModelMixin", "WeightsError", "model_folder", "read_config", "load_weights"]
