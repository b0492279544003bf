"""Training configs: the original train_tuneavideo.py's keys and defaults, plus
MindSpore's (device, mode), as one typed schema (OmegaConf structured
configs). `load_config` refuses an unknown key, a value of the wrong type, a
value out of range and settings that contradict each other, naming the key,
the value and what would be accepted, before anything is loaded or written;
`check_paths` does the same for the files a run reads and writes."""
import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Optional

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data import check_frame_size
from .hub import is_hub_id
from .sampling import SAMPLERS

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")  # optim.lr_lambda's
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainData:
    video_path: str = MISSING
    prompt: str = MISSING
    n_sample_frames: int = 8
    width: int = 512
    height: int = 512
    sample_start_idx: int = 0
    sample_frame_rate: int = 1
    crop: Optional[str] = None


@dataclass
class ValidationData:
    prompts: List[str] = field(default_factory=list)
    video_length: int = 8
    width: int = 512
    height: int = 512
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    use_inv_latent: bool = True
    num_inv_steps: int = 50
    negative_prompt: Optional[str] = None
    # the sampler (sampling.SAMPLERS): ddim, the original's; dpmsolver++ inverts with its own inverse
    scheduler: str = "ddim"
    # the benchmark's metrics of every validation video (metrics.py): a CLIP model, and a PickScore one
    clip_model_path: Optional[str] = None
    pickscore_model_path: Optional[str] = None
    pickscore_processor_path: Optional[str] = None


@dataclass
class TrainConfig:
    pretrained_model_path: str = MISSING
    output_dir: str = MISSING
    train_data: TrainData = field(default_factory=TrainData)
    validation_data: ValidationData = field(default_factory=ValidationData)
    validation_steps: int = 100
    trainable_modules: List[str] = field(default_factory=lambda: ["attn1.to_q", "attn2.to_q", "attn_temp"])
    train_batch_size: int = 1
    max_train_steps: int = 500
    learning_rate: float = 3e-5
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    checkpointing_steps: int = 500
    resume_from_checkpoint: Optional[str] = None
    mixed_precision: Any = "fp16"  # no, fp16 or bf16; YAML 1.1 reads an unquoted `no` as false
    use_8bit_adam: bool = False
    enable_xformers_memory_efficient_attention: bool = True
    seed: Optional[int] = None
    # MindSpore's own
    device: Optional[str] = None
    mode: str = "graph"


def _check_keys(config, schema, prefix=""):
    """Unknown keys, with the nearest known ones (OmegaConf's own message names no alternative)."""
    known = {f.name: f for f in fields(schema)}
    for key, value in config.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(known)}"
            raise ValueError(f"unknown config key {prefix}{key}{hint}")
        sub = known[key].default_factory() if callable(known[key].default_factory) else None
        if is_dataclass(sub):
            if not isinstance(value, dict):
                names = ", ".join(f.name for f in fields(sub))
                raise ValueError(f"config key {prefix}{key} must be a mapping of {names}")
            _check_keys(value, type(sub), f"{prefix}{key}.")


def _merge_error(e, container, source):
    """An OmegaConf type error as one line naming the key, the value and the type wanted."""
    key = getattr(e, "full_key", None) or "?"
    message = str(getattr(e, "msg", e)).splitlines()[0]
    if "is not a ListConfig" in message:
        value = container
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        message = (f"{value!r} is not a list; write a list, e.g. [{value}] (YAML) or {key}=[{value}] "
                   "(command line)")
    return ValueError(f"config key {key} ({source}): {message}")


def load_config(path=None, overrides=()):
    """The config at `path` (YAML) with dot-list `overrides` ("a.b=1") applied
    over the defaults, typed and checked (see `check`)."""
    layers = []
    if path is not None:
        try:
            with open(path) as f:
                yaml.safe_load(f)  # yaml names the line and column of a syntax error
            user = OmegaConf.load(path)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
        except OSError as e:
            raise FileNotFoundError(f"config not found: {path} ({e.strerror})") from None
        user = OmegaConf.to_container(user)
        if not isinstance(user, dict):
            raise ValueError(f"{path}: a config is a mapping of keys, not {type(user).__name__}")
        layers.append((user, path))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. max_train_steps=100)")
    try:
        dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ValueError(f"bad override in {list(overrides)}: {e}") from None
    layers.append((dotlist, "command line"))
    config = OmegaConf.structured(TrainConfig)
    for container, source in layers:
        _check_keys(container, TrainConfig)
        try:
            config = OmegaConf.merge(config, container)
        except OmegaConfBaseException as e:
            raise _merge_error(e, container, source) from None
    missing = sorted(OmegaConf.missing_keys(config))
    if missing:
        raise ValueError(f"config needs {', '.join(missing)}")
    if config.mixed_precision is False:
        config.mixed_precision = "no"
    check(config)
    return config


def _require(ok, key, value, accepted):
    if not ok:
        raise ValueError(f"config key {key} is {value!r}; it must be {accepted}")


def check(c):
    """Ranges and the relations between keys, in the order a reader meets them."""
    for key in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                "validation_steps"):
        _require(c[key] >= 1, key, c[key], "a whole number of at least 1")
    _require(c.lr_warmup_steps >= 0, "lr_warmup_steps", c.lr_warmup_steps, "0 or more")
    _require(c.learning_rate > 0, "learning_rate", c.learning_rate, "a positive number such as 3e-5")
    for key in ("adam_beta1", "adam_beta2"):
        _require(0 <= c[key] < 1, key, c[key], "in [0, 1)")
    _require(c.adam_epsilon > 0, "adam_epsilon", c.adam_epsilon, "positive")
    _require(c.adam_weight_decay >= 0, "adam_weight_decay", c.adam_weight_decay, "0 or more")
    _require(c.max_grad_norm > 0, "max_grad_norm", c.max_grad_norm, "positive")
    _require(c.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", c.lr_scheduler, " or ".join(LR_SCHEDULERS))
    _require(c.mixed_precision in MIXED_PRECISION, "mixed_precision", c.mixed_precision,
             " or ".join(MIXED_PRECISION))
    if c.use_8bit_adam:
        raise ValueError("config key use_8bit_adam: use_8bit_adam is not available "
                         "(bitsandbytes' 8-bit Adam is CUDA-only); set it to False")
    _require(c.seed is None or 0 <= c.seed < 2 ** 32, "seed", c.seed, "null or a whole number in [0, 2**32)")
    _require(c.mode in ("graph", "pynative"), "mode", c.mode, "graph or pynative")
    _require(c.device in (None, "Ascend", "GPU", "CPU"), "device", c.device, "null (the first available), "
             "Ascend, GPU or CPU")
    _require(len(c.trainable_modules) > 0, "trainable_modules", list(c.trainable_modules),
             "a list of name parts, e.g. [attn1.to_q, attn2.to_q, attn_temp]")
    t, v = c.train_data, c.validation_data
    for key in ("n_sample_frames", "sample_frame_rate"):
        _require(t[key] >= 1, f"train_data.{key}", t[key], "a whole number of at least 1")
    _require(t.sample_start_idx >= 0, "train_data.sample_start_idx", t.sample_start_idx, "0 or more")
    _require(t.crop in (None, "center"), "train_data.crop", t.crop, "null or center")
    for prefix, data in (("train_data", t), ("validation_data", v)):
        try:
            check_frame_size(data.height, data.width)
        except ValueError as e:
            raise ValueError(f"config keys {prefix}.height and .width: {e}") from None
    for key in ("video_length", "num_inference_steps", "num_inv_steps"):
        _require(v[key] >= 1, f"validation_data.{key}", v[key], "a whole number of at least 1")
    _require(v.guidance_scale >= 0, "validation_data.guidance_scale", v.guidance_scale, "0 or more")
    _require(v.scheduler in SAMPLERS, "validation_data.scheduler", v.scheduler, " or ".join(SAMPLERS))
    if v.prompts and v.use_inv_latent:
        # sampling starts from the clip's inverted latents, which have the clip's frames and size
        for key, train_key in (("video_length", "n_sample_frames"), ("height", "height"), ("width", "width")):
            if v[key] != t[train_key]:
                raise ValueError(f"config key validation_data.{key} is {v[key]}, but use_inv_latent samples "
                                 f"from the inverted clip, which has train_data.{train_key} {t[train_key]}: "
                                 "make them equal, or set validation_data.use_inv_latent=False")


def check_paths(c):
    """The files a run reads and the folder it writes, before anything is loaded or written."""
    video = c.train_data.video_path
    if not os.path.exists(video):
        raise FileNotFoundError(f"config key train_data.video_path: video not found: {video}")
    model = c.pretrained_model_path
    if not os.path.isdir(model) and not is_hub_id(model):
        raise FileNotFoundError(f"config key pretrained_model_path: {model} is not a folder "
                                "(nor a Hub id such as CompVis/stable-diffusion-v1-4)")
    if os.path.exists(c.output_dir) and not os.path.isdir(c.output_dir):
        raise NotADirectoryError(f"config key output_dir: {c.output_dir} is a file; "
                                 "output_dir must be a folder")
    v = c.validation_data
    if v.prompts:
        from .metrics import check_metric_models
        check_metric_models(v.clip_model_path, v.pickscore_model_path, v.pickscore_processor_path,
                            lambda name: f"config key validation_data.{name}")
    resume = c.resume_from_checkpoint
    if resume not in (None, "latest") and resolve_checkpoint(c) is None:
        raise FileNotFoundError(f"config key resume_from_checkpoint: no checkpoint {resume} "
                                "(a folder, a name in output_dir such as checkpoint-500, or latest)")


def resolve_checkpoint(c):
    """The checkpoint folder resume_from_checkpoint names: a path, or (as in the original) a name in
    output_dir; None when there is none."""
    for path in (c.resume_from_checkpoint, os.path.join(c.output_dir, c.resume_from_checkpoint)):
        if os.path.isdir(path):
            return path
    return None
