"""Training configs: the original train_tuneavideo.py's keys and defaults, plus
MindSpore's (device, mode), read with OmegaConf and checked key by key."""
import difflib

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
import yaml

TRAIN_DATA = dict(video_path=None, prompt=None, n_sample_frames=8, width=512, height=512, sample_start_idx=0,
                  sample_frame_rate=1, crop=None)
VALIDATION_DATA = dict(prompts=[], video_length=8, width=512, height=512, num_inference_steps=20,
                       guidance_scale=7.5, use_inv_latent=True, num_inv_steps=50, negative_prompt=None)
DEFAULTS = dict(
    pretrained_model_path=None, output_dir=None, train_data=TRAIN_DATA, validation_data=VALIDATION_DATA,
    validation_steps=100, trainable_modules=["attn1.to_q", "attn2.to_q", "attn_temp"], train_batch_size=1,
    max_train_steps=500, learning_rate=3e-5, scale_lr=False, lr_scheduler="constant", lr_warmup_steps=0,
    adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2, adam_epsilon=1e-8, max_grad_norm=1.0,
    gradient_accumulation_steps=1, gradient_checkpointing=True, checkpointing_steps=500,
    resume_from_checkpoint=None, mixed_precision="fp16", use_8bit_adam=False,
    enable_xformers_memory_efficient_attention=True, seed=None,
    # MindSpore's own
    device=None, mode="graph",
)
REQUIRED = ("pretrained_model_path", "output_dir", "train_data.video_path", "train_data.prompt")


def _check_keys(config, defaults, prefix=""):
    for key, value in config.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(defaults)}"
            raise ValueError(f"unknown config key {prefix}{key}{hint}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix}{key} must be a mapping")
            _check_keys(value, defaults[key], f"{prefix}{key}.")


def load_config(path=None, overrides=()):
    """The config at `path` (YAML) with dot-list `overrides` ("a.b=1") applied
    over the defaults, as an OmegaConf object."""
    layers = [OmegaConf.create(DEFAULTS)]
    if path is not None:
        try:
            with open(path) as f:
                yaml.safe_load(f)  # yaml names the line and column of a syntax error
            user = OmegaConf.load(path)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
        except OSError as e:
            raise FileNotFoundError(f"config not found: {path} ({e.strerror})") from None
        _check_keys(OmegaConf.to_container(user), DEFAULTS)
        layers.append(user)
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ValueError(f"bad override in {list(overrides)}: {e}") from None
    _check_keys(OmegaConf.to_container(dotlist), DEFAULTS)
    config = OmegaConf.merge(*layers, dotlist)
    for key in REQUIRED:
        if OmegaConf.select(config, key) is None:
            raise ValueError(f"config needs {key}")
    if config.use_8bit_adam:
        raise ValueError("use_8bit_adam is not available: bitsandbytes' 8-bit Adam is CUDA-only; set it to False")
    if config.mixed_precision is False:  # YAML 1.1 reads an unquoted `no` as false
        config.mixed_precision = "no"
    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be no, fp16 or bf16, not {config.mixed_precision!r}")
    return config
