"""Converting diffusers folders and tuned Tune-A-Video UNets to MindSpore
checkpoints and back. Parameter names are the same on both sides (the cells
use the diffusers names), so conversion changes the container, and the dtype
when asked, never a name or a value."""
import logging
import os
import shutil
import time

import numpy as np

from tuneavideo_ms.atomic import atomic_dir
from tuneavideo_ms.weights import WeightsError, iter_tensors, save_safetensors

logger = logging.getLogger(__name__)

# source weight file -> the stem both formats share
STEMS = {"diffusion_pytorch_model": "diffusion_pytorch_model", "pytorch_model": "model", "model": "model"}
EXTENSIONS = (".safetensors", ".bin", ".ckpt")
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def _is_weight_file(name):
    stem, ext = os.path.splitext(name)
    return stem in STEMS and ext in EXTENSIONS


def _weight_file(folder):
    return next((name for name in sorted(os.listdir(folder)) if _is_weight_file(name)), None)


def detect(src):
    """'pipeline' (model_index.json), 'model' (config.json and one weight file), or an error naming what is there."""
    if os.path.isdir(src):
        names = sorted(os.listdir(src))
        if "model_index.json" in names:
            return "pipeline"
        if "config.json" in names and _weight_file(src):
            return "model"
        raise ValueError(f"unknown layout at {src}: found {', '.join(names[:12]) or 'an empty folder'}; expected a "
                         "diffusers pipeline (model_index.json) or a model folder (config.json + weights)")
    if os.path.exists(src):
        raise ValueError(f"{src}: single-file LDM checkpoints are not supported yet; convert a diffusers folder")
    raise FileNotFoundError(f"source not found: {src}")


def _convert_model(folder, out, to, dtype, counts):
    os.makedirs(out, exist_ok=True)
    weight = _weight_file(folder)
    for name in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, name)) and not _is_weight_file(name):
            shutil.copy2(os.path.join(folder, name), os.path.join(out, name))
    stem = STEMS[os.path.splitext(weight)[0]]
    state = {}
    for name, tensor in iter_tensors(os.path.join(folder, weight)):
        if dtype is not None and np.issubdtype(tensor.dtype, np.floating):
            tensor = tensor.astype(dtype)
        state[name] = np.ascontiguousarray(tensor)
        counts["tensors"] += 1
        counts["bytes"] += state[name].nbytes
    if to == "mindspore":
        import mindspore as ms
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in state.items()],
                           os.path.join(out, stem + ".ckpt"))
    else:
        save_safetensors(os.path.join(out, stem + ".safetensors"), state)
    logger.info("%s: %d tensors -> %s", folder, len(state), out)


def convert(src, dst, to="mindspore", dtype=None, overwrite=False):
    """Converts `src` into the folder `dst` (written under a temporary name and
    renamed). Returns a summary dict."""
    if to not in ("mindspore", "diffusers"):
        raise ValueError(f"--to must be mindspore or diffusers, not {to!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)} (bf16 is not written yet), not {dtype!r}")
    kind = detect(src)
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    logger.info("found a diffusers %s at %s", kind, src)
    start, counts = time.time(), {"tensors": 0, "bytes": 0}
    cast = DTYPES.get(dtype)
    try:
        with atomic_dir(dst, overwrite=overwrite) as tmp:
            if kind == "model":
                _convert_model(src, tmp, to, cast, counts)
            else:
                for name in sorted(os.listdir(src)):
                    path = os.path.join(src, name)
                    if os.path.isdir(path) and _weight_file(path) and os.path.isfile(os.path.join(path, "config.json")):
                        _convert_model(path, os.path.join(tmp, name), to, cast, counts)
                    elif os.path.isdir(path):
                        shutil.copytree(path, os.path.join(tmp, name))
                    else:
                        shutil.copy2(path, os.path.join(tmp, name))
    except (WeightsError, OSError) as e:
        raise type(e)(f"conversion of {src} failed, nothing written to {dst}: {e}") from None
    summary = dict(kind=kind, tensors=counts["tensors"], bytes=counts["bytes"], seconds=time.time() - start)
    logger.info("converted %d tensors, %.1f MB, in %.1f s", summary["tensors"], summary["bytes"] / 2 ** 20,
                summary["seconds"])
    return summary
