"""Stable Diffusion folders named by path or by Hugging Face Hub id; ids are
resolved through huggingface_hub's cache (the local snapshot first, so a cached
model needs no network)."""
import logging
import os
import re

from .layout import COMPONENTS

logger = logging.getLogger(__name__)
# what the pipeline reads; the Hub's SD repos also hold single-file checkpoints and other frameworks' weights
DOWNLOAD = ["model_index.json"] + [f"{name}/*" for name in COMPONENTS]
SKIPPED = ["*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.pb", "*non_ema*"]


def is_hub_id(path):
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None and ".." not in path


def _offline():
    from huggingface_hub import constants
    flag = os.environ.get("HF_HUB_OFFLINE", "").upper()
    return constants.HF_HUB_OFFLINE or flag in ("1", "ON", "YES", "TRUE")


def resolve(path, allow_patterns=DOWNLOAD):
    """A local folder for `path`: the path itself when it exists, else the
    snapshot of the Hub id `path` ("org/name") in the Hugging Face cache,
    downloaded first (the files `allow_patterns` match) when it is not cached
    and the Hub can be reached."""
    path = os.fspath(path)
    if os.path.exists(path) or not is_hub_id(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"model folder not found: {path} (a Stable Diffusion folder, "
                                    "or a Hub id such as CompVis/stable-diffusion-v1-4)")
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        return snapshot_download(path, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    advice = (f"{path} is neither a folder nor a model in the Hugging Face cache ({cache}); "
              f"on a machine with network run `huggingface-cli download {path}` "
              "(HF_HUB_CACHE chooses the cache), or pass a folder")
    if _offline():
        raise FileNotFoundError(advice + " (HF_HUB_OFFLINE is set)")
    logger.info("downloading %s from the Hugging Face Hub into %s", path, cache)
    try:
        return snapshot_download(path, cache_dir=cache, allow_patterns=allow_patterns,
                                 ignore_patterns=SKIPPED)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many kinds; each means "not available"
        raise FileNotFoundError(f"{advice} ({type(e).__name__}: {e})") from None
