"""Model folders in the diffusers layout: config.json plus weights (one file,
an fp16 variant, or shards with an index), in a folder or a Hub snapshot."""
import json
import os
from typing import Optional

from .. import hub
from ..atomic import atomic_dir
from ..weights import (DIFFUSERS_WEIGHTS, WeightsError, find_weights, load_into, open_weights,
                       save_safetensors, state_dict)


class Config(dict):
    """A model config: a dict whose keys also read as attributes, as diffusers' `model.config.x`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def build_config(kind, defaults, config, ignored=()):
    """`config` over `defaults`, as a Config. diffusers' bookkeeping keys ("_class_name", ...) and `ignored`
    ones (fields that change nothing here) are dropped; any other key this model does not know is an error,
    so that a typo or another model's config never passes silently."""
    unknown = sorted(k for k in config if k not in defaults and k not in ignored and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown {kind} config fields: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(defaults))})")
    c = Config(defaults)
    c.update({k: v for k, v in config.items() if k in defaults})
    return c


def model_folder(path, subfolder=None):
    """The folder of a model: `path` (a folder or a Hub id), then `subfolder` in it."""
    path = hub.resolve(path)
    folder = os.path.join(path, subfolder) if subfolder else path
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    return folder


def read_config(folder, filename="config.json"):
    """A JSON config file of a model folder, as a dict."""
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{filename} not found in {folder}")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_weights(model, folder, weight_names=DIFFUSERS_WEIGHTS, variant=None,
                 may_be_missing=lambda name: False):
    """Loads `folder`'s weights (the `variant`'s when given) into `model`, under current diffusers names."""
    paths = find_weights(folder, weight_names, variant)
    source = paths[0] if len(paths) == 1 else f"{folder} ({len(paths)} shards)"
    load_into(model, open_weights(paths), source=source, may_be_missing=may_be_missing)
    return paths


class ModelMixin:
    """from_pretrained / save_pretrained for cells built from a config dict (`self.config`)."""

    weight_names = DIFFUSERS_WEIGHTS  # looked for in this order; the first is what save_pretrained writes

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str, subfolder: Optional[str] = None,
                        variant: Optional[str] = None):
        """Loads a model folder (or Hub id): config.json and weights in any format weights.py reads;
        `variant` ("fp16") picks diffusers' variant files. Parameters are float32 whatever the file holds."""
        folder = model_folder(pretrained_model_path, subfolder)
        model = cls(**read_config(folder))
        load_weights(model, folder, cls.weight_names, variant)
        return model

    def save_pretrained(self, save_directory: str) -> None:
        """config.json + the weights (safetensors) under the diffusers names, atomically."""
        with atomic_dir(save_directory) as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(dict(self.config, _class_name=type(self).__name__), f, indent=2, sort_keys=True)
            save_safetensors(os.path.join(tmp, self.weight_names[0]), state_dict(self))


__all__ = ["Config", "ModelMixin", "WeightsError", "model_folder", "read_config", "load_weights"]
