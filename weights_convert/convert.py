"""Converting Stable Diffusion and Tune-A-Video checkpoints to MindSpore
checkpoints and back. The cells here use current diffusers parameter names, so
a diffusers folder converts by changing the container (and the dtype, when
asked), never a value: names change only where old diffusers wrote legacy ones
(weights.open_weights); a single-file LDM checkpoint is renamed to the
diffusers layout on the way (ldm.py). One tensor is in memory at a time."""
import logging
import os
import shutil
import time
from typing import Optional

from tqdm import tqdm

from tuneavideo_ms.atomic import atomic_dir
from tuneavideo_ms.layout import model_index, write_json
from tuneavideo_ms.weights import (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS, WeightsError, find_weights,
                                   is_weight_file, open_tensors, open_weights, write_mindspore_ckpt,
                                   write_safetensors)

from . import ldm

logger = logging.getLogger(__name__)

DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
WRITERS = {"mindspore": (".ckpt", write_mindspore_ckpt), "diffusers": (".safetensors", write_safetensors)}
SINGLE_FILE = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
# the pipeline's parts with weights this project loads; the rest of a pipeline folder (a safety checker,
# a feature extractor) is copied as it is
MODELS = ("unet", "vae", "text_encoder")


def _weight_names(folder):
    """The weight naming (diffusers' or transformers') of a model folder, or None without weights."""
    names = os.listdir(folder)
    for weight_names in (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS):
        if any(is_weight_file(name, weight_names) for name in names):
            return weight_names
    return None


def detect(src: str) -> str:
    """'pipeline' (model_index.json), 'model' (config.json and weights), 'ldm' (a single
    Stable Diffusion file), or an error naming what is there."""
    if os.path.isdir(src):
        names = sorted(os.listdir(src))
        if "model_index.json" in names:
            return "pipeline"
        if "config.json" in names and _weight_names(src):
            return "model"
        found = ", ".join(names[:12]) or "an empty folder"
        raise ValueError(f"unknown layout at {src}: found {found}; expected a diffusers pipeline "
                         "(model_index.json) or a model folder (config.json + weights)")
    if os.path.isfile(src):
        if not src.endswith(SINGLE_FILE):
            raise ValueError(f"unknown layout: {src} is a file but not a checkpoint "
                             f"({', '.join(SINGLE_FILE)})")
        return "ldm"
    raise FileNotFoundError(f"source not found: {src}")


class _Writer:
    """Writes models one tensor at a time, advancing one progress bar and counting tensors and bytes."""

    def __init__(self, to, dtype, total):
        self.ext, self.write = WRITERS[to]
        self.dtype = dtype
        self.tensors = self.bytes = 0
        self.bar = tqdm(total=total, unit="tensor", desc="converting", disable=None)

    def model(self, out, stem, config, refs):
        os.makedirs(out, exist_ok=True)
        if config is not None:
            write_json(os.path.join(out, "config.json"), config)
        path = os.path.join(out, stem + self.ext)
        self.write(path, refs, self.dtype, on_tensor=lambda name: self.bar.update(1))
        self.tensors += len(refs)
        self.bytes += os.path.getsize(path)
        logger.info("%d tensors -> %s", len(refs), path)


def _models(src, kind, variant):
    """(folder, weight naming, files read) of each model to convert in a diffusers source."""
    folders = [src] if kind == "model" else [os.path.join(src, n) for n in MODELS
                                             if os.path.isfile(os.path.join(src, n, "config.json"))]
    return [(folder, names, find_weights(folder, names, variant)) for folder in folders
            if (names := _weight_names(folder))]


def _convert_folder(src, tmp, kind, writer_args, variant):
    models = [(folder, names, paths, open_weights(paths)) for folder, names,
              paths in _models(src, kind, variant)]
    writer = _Writer(*writer_args, total=sum(len(refs) for *_, refs in models))
    if kind == "pipeline":
        for name in sorted(os.listdir(src)):
            path = os.path.join(src, name)
            if not any(folder == path for folder, *_ in models):
                (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, os.path.join(tmp, name))
    for folder, weight_names, paths, refs in models:
        out = tmp if kind == "model" else os.path.join(tmp, os.path.basename(folder))
        os.makedirs(out, exist_ok=True)
        read = {os.path.basename(p) for p in paths}
        left_out = []
        for name in sorted(os.listdir(folder)):
            if is_weight_file(name, weight_names):
                if name not in read and not name.endswith(".json"):
                    left_out.append(name)
            elif os.path.isfile(os.path.join(folder, name)):
                shutil.copy2(os.path.join(folder, name), os.path.join(out, name))
        if left_out:
            logger.info("%s: left out %s (other variants of the weights; --variant converts one)", folder,
                        ", ".join(left_out))
        writer.model(out, weight_names[0].rsplit(".", 1)[0], None, refs)
    return writer


def _convert_ldm(src, tmp, writer_args, prediction_type, image_size, upcast_attention, tokenizer):
    refs = open_tensors(src)
    if not ldm.is_ldm(refs):
        found = ", ".join(list(refs)[:5]) or "no tensors"
        raise ValueError(f"unknown layout: {src} is not a Stable Diffusion LDM checkpoint (no "
                         f"{ldm.UNET_PREFIX}* tensors; found {found})")
    parts, left_out = ldm.convert(refs, prediction_type, image_size, upcast_attention)
    if left_out:
        logger.info("left out %d tensors outside the UNet, VAE and text encoder (e.g. %s)", len(left_out),
                    ", ".join(left_out[:3]))
    writer = _Writer(*writer_args, total=sum(len(out) for _, out in parts.values()))
    for name, (config, out) in parts.items():
        writer.model(os.path.join(tmp, name),
                     "model" if name == "text_encoder" else "diffusion_pytorch_model", config, out)
    os.makedirs(os.path.join(tmp, "scheduler"))
    write_json(os.path.join(tmp, "scheduler", "scheduler_config.json"), ldm.scheduler_config(prediction_type))
    index = model_index("StableDiffusionPipeline", safety_checker=[None, None],
                        feature_extractor=[None, None], requires_safety_checker=False)
    write_json(os.path.join(tmp, "model_index.json"), index)
    if tokenizer:
        shutil.copytree(tokenizer, os.path.join(tmp, "tokenizer"))
    else:
        logger.warning("no --tokenizer given: an LDM file holds no tokenizer; copy the CLIP tokenizer folder "
                       "(SD 1.x: openai/clip-vit-large-patch14, SD 2.x: the SD 2 repo's tokenizer/) "
                       "to tokenizer/")
    return writer


def _check_destination(src, dst):
    """Refuses a destination that is the source, lies inside it or holds it: replacing
    it would destroy the source."""
    src, dst = os.path.realpath(src), os.path.realpath(dst)
    if os.path.isfile(dst):
        raise FileExistsError(f"--dst {dst} is a file; "
                              "it must be a folder (new, or replaced with --overwrite)")
    inside = os.path.commonpath([src, dst])
    if dst == src or inside == src or inside == dst:
        relation = "is" if dst == src else "is inside" if inside == src else "contains"
        raise ValueError(f"--dst {dst} {relation} the source {src}: converting would destroy the source; "
                         "choose a destination outside it")


def convert(src: str, dst: str, to: str = "mindspore", dtype: Optional[str] = None, overwrite: bool = False,
            prediction_type: str = "epsilon", image_size: Optional[int] = None,
            upcast_attention: bool = False, tokenizer: Optional[str] = None, variant: Optional[str] = None):
    """Converts `src` into the folder `dst` (written under a temporary name and
    renamed). A diffusers source's weights are read as its models load them
    (legacy names renamed, shards joined, the `variant`'s files when given)
    and written as one file per model under the plain name. Returns a summary dict."""
    if to not in WRITERS:
        raise ValueError(f"--to must be mindspore or diffusers, not {to!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"--prediction-type must be epsilon or v_prediction, not {prediction_type!r}")
    if tokenizer is not None and not os.path.isfile(os.path.join(tokenizer, "vocab.json")):
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no vocab.json there")
    kind = detect(src)
    _check_destination(src, dst)
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    logger.info("found %s at %s", {"pipeline": "a diffusers pipeline", "model": "a model folder",
                                   "ldm": "a single-file checkpoint"}[kind], src)
    start = time.time()
    writer_args = (to, DTYPES.get(dtype))
    try:
        with atomic_dir(dst, overwrite=overwrite) as tmp:
            if kind == "ldm":
                writer = _convert_ldm(src, tmp, writer_args, prediction_type, image_size, upcast_attention,
                                      tokenizer)
            else:
                writer = _convert_folder(src, tmp, kind, writer_args, variant)
            writer.bar.close()
    except (WeightsError, OSError, ValueError) as e:
        raise type(e)(f"conversion of {src} failed, nothing written to {dst}: {e}") from None
    summary = dict(kind=kind, tensors=writer.tensors, bytes=writer.bytes, seconds=time.time() - start)
    logger.info("converted %d tensors, %.1f MB, in %.1f s", summary["tensors"], summary["bytes"] / 2 ** 20,
                summary["seconds"])
    return summary
