"""TuneAVideoPipeline: text-to-video sampling with a (tuned) video UNet."""
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from . import hub
from .data import check_frame_size
from .layout import COMPONENTS
from .models import UNet3DConditionModel
from .models.modeling import read_config
from .models.text_encoder import CLIPTextModel
from .models.vae import AutoencoderKL
from .runtime.compile_cache import CachedCompile
from .sampling import sample
from .schedulers import DDIMScheduler

logger = logging.getLogger(__name__)


@dataclass
class TuneAVideoPipelineOutput:
    videos: np.ndarray  # float32 [b, 3, f, H, W] in [0, 1]


class GuidedDenoiser(CachedCompile, nn.Cell):
    """The UNet and classifier-free guidance as one cell: in graph mode it is
    compiled once per shape (or loaded from the compile cache) and reused
    across steps, prompts and videos (the timestep and guidance scale are
    tensor inputs, not constants)."""

    def __init__(self, unet, guided):
        super().__init__()
        self.unet = unet
        self.guided = guided
        self.graph_name = "the guided denoiser (UNet and guidance)" if guided else "the denoiser (UNet)"

    def construct(self, latents, timestep, context, guidance_scale):
        if self.guided:
            noise = self.unet(ops.concat((latents, latents)), timestep, context).astype(ms.float32)
            uncond, cond = ops.chunk(noise, 2)
            return uncond + guidance_scale * (cond - uncond)
        # a mixed-precision UNet answers in fp16; the scheduler's arithmetic stays fp32
        return self.unet(latents, timestep, context).astype(ms.float32)


class ModelGraph(CachedCompile, nn.Cell):
    """One of a model's methods as a cell of its own: in graph mode it compiles once per input shape (or
    loads from the compile cache) and is reused for every call."""

    def __init__(self, model, method, graph_name):
        super().__init__()
        self.model = model
        self.method = method
        self.graph_name = graph_name

    def construct(self, *inputs):
        return getattr(self.model, self.method)(*inputs)


def _log_unused_components(root):
    """Says once which components of model_index.json (the safety checker, its feature extractor) go
    unused."""
    if not os.path.isfile(os.path.join(root, "model_index.json")):
        return
    index = read_config(root, "model_index.json")
    unused = sorted(k for k, v in index.items() if not k.startswith("_") and k not in COMPONENTS
                    and isinstance(v, list) and any(v))
    if unused:
        logger.info("%s: not loading %s (not used for video editing)", root, ", ".join(unused))


def as_tensor(x):
    """A float32 MindSpore tensor of an array (a tensor passes as it is)."""
    return x if isinstance(x, ms.Tensor) else ms.Tensor(np.asarray(x, np.float32))


class TuneAVideoPipeline:
    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, vae_batch_size=4):
        self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler = (
            vae, text_encoder, tokenizer, unet, scheduler)
        self.vae_batch_size = vae_batch_size
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._graphs = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str, unet: Optional[UNet3DConditionModel] = None,
                        vae: Optional[AutoencoderKL] = None, text_encoder: Optional[CLIPTextModel] = None,
                        tokenizer=None, scheduler: Optional[DDIMScheduler] = None, vae_batch_size: int = 4,
                        variant: Optional[str] = None) -> "TuneAVideoPipeline":
        """Loads the components not given from a Stable Diffusion folder (diffusers layout) or Hub id;
        `variant` ("fp16") picks diffusers' variant weight files."""
        root = hub.resolve(pretrained_model_path)
        _log_unused_components(root)

        def folder(name):
            path = os.path.join(root, name)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"{pretrained_model_path} has no {name}/ folder "
                                        f"(a Stable Diffusion folder holds {', '.join(COMPONENTS)})")
            return path

        if unet is None:
            config = read_config(folder("unet"))
            inflated = config.get("_class_name") == "UNet3DConditionModel"
            if inflated:
                unet = UNet3DConditionModel.from_pretrained(folder("unet"), variant=variant)
            else:
                unet = UNet3DConditionModel.from_pretrained_2d(folder("unet"), variant=variant)
        if vae is None:
            vae = AutoencoderKL.from_pretrained(folder("vae"), variant=variant)
        if text_encoder is None:
            text_encoder = CLIPTextModel.from_pretrained(folder("text_encoder"), variant=variant)
        if tokenizer is None:
            from transformers import CLIPTokenizer
            tokenizer = CLIPTokenizer.from_pretrained(folder("tokenizer"))
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(folder("scheduler"))
        return cls(vae, text_encoder, tokenizer, unet, scheduler, vae_batch_size)

    # ------------------------------------------------------------------------- text

    def encode_prompt(self, prompt: Union[str, Sequence[str]]) -> ms.Tensor:
        """Text embeddings [len(prompts), tokens, width] for a prompt or a list of them."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="np").input_ids
        encode = self._graph(self.text_encoder, "construct", "the text encoder")
        return encode(ms.Tensor(ids.astype(np.int32)))[0]

    def _cell(self, key, build):
        """The graph cell `build()` makes, built once per `key` (a model's id and what runs of it: the cell
        holds the model, so its id stays its own)."""
        if key not in self._graphs:
            self._graphs[key] = build()
        return self._graphs[key]

    def _graph(self, model, method, name):
        """`model`'s `method` as a ModelGraph, one per model and method."""
        return self._cell((id(model), method), lambda: ModelGraph(model, method, name))

    # ------------------------------------------------------------------------- VAE

    def _frames_in_chunks(self, fn, x):
        """Applies `fn` to [(b f), ...] frames vae_batch_size at a time, so long
        clips at full size fit in memory; `fn` returns a tensor or a tuple."""
        outputs = [fn(x[i:i + self.vae_batch_size]) for i in range(0, x.shape[0], self.vae_batch_size)]
        if isinstance(outputs[0], tuple):
            return tuple(ops.concat(parts, 0) for parts in zip(*outputs))
        return ops.concat(outputs, 0)

    def encode_video(self, pixels: Union[np.ndarray, ms.Tensor], deterministic: bool = True,
                     seed: Optional[int] = None) -> ms.Tensor:
        """Pixels [b, 3, f, H, W] in [-1, 1] -> scaled latents [b, 4, f, H/8, W/8]
        (the posterior mean when deterministic, a sample otherwise)."""
        mean, std = self.encode_posterior(pixels)
        if not deterministic:
            noise = np.random.default_rng(seed).standard_normal(mean.shape).astype(np.float32)
            mean = mean + std * ms.Tensor(noise)
        return mean * self.vae.config.scaling_factor

    def encode_posterior(self, pixels):
        """The VAE posterior (mean, std) of each frame, unscaled, each [b, 4, f, h, w]."""
        pixels = as_tensor(pixels)
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [batch, 3, frames, height, width], got {tuple(pixels.shape)}")
        b, _, f, h, w = pixels.shape
        check_frame_size(h, w, self.vae_scale_factor)
        frames = pixels.transpose(0, 2, 1, 3, 4).reshape(b * f, 3, h, w)
        mean, std = self._frames_in_chunks(self._graph(self.vae, "encode", "the VAE encoder"), frames)
        c, lh, lw = mean.shape[1:]
        return tuple(t.reshape(b, f, c, lh, lw).transpose(0, 2, 1, 3, 4) for t in (mean, std))

    def decode_latents(self, latents):
        """Scaled latents [b, 4, f, h, w] -> numpy float32 video [b, 3, f, H, W] in [0, 1]."""
        latents = as_tensor(latents) / self.vae.config.scaling_factor
        b, c, f, h, w = latents.shape
        frames = latents.transpose(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        video = self._frames_in_chunks(self._graph(self.vae, "decode", "the VAE decoder"), frames)
        _, c, hh, ww = video.shape
        video = video.reshape(b, f, c, hh, ww).transpose(0, 2, 1, 3, 4)
        return np.clip(video.asnumpy().astype(np.float32) / 2 + 0.5, 0, 1)

    # ------------------------------------------------------------------------- denoising

    def denoise(self, latents, timestep, context, guidance_scale=1.0):
        """The model output at `timestep`; with guidance_scale > 1, `context` is
        [unconditional; conditional] and the two run in one batched UNet call."""
        guided = guidance_scale > 1.0
        latents = as_tensor(latents)
        self.unet._check_inputs(latents, context, None)
        denoiser = self._cell((id(self.unet), guided), lambda: GuidedDenoiser(self.unet, guided))
        t = ms.Tensor(np.array([timestep], np.float32))
        return denoiser(latents, t, context, ms.Tensor(np.float32(guidance_scale)))

    def __call__(self, prompt: Union[str, Sequence[str]], video_length: int = 8, height: Optional[int] = None,
                 width: Optional[int] = None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: Union[str, Sequence[str], None] = None, num_videos_per_prompt: int = 1,
                 eta: float = 0.0, latents: Union[np.ndarray, ms.Tensor, None] = None,
                 seed: Optional[int] = None) -> TuneAVideoPipelineOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        else:
            negatives = list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts")
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        check_frame_size(height, width, self.vae_scale_factor)
        batch = len(prompts) * num_videos_per_prompt
        shape = (batch, self.unet.config.in_channels, video_length, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        rng = np.random.default_rng(seed)
        latents = self._initial_latents(latents, shape, rng)

        context = ops.repeat_interleave(self.encode_prompt(prompts), num_videos_per_prompt, 0)
        if guidance_scale > 1.0:
            uncond = ops.repeat_interleave(self.encode_prompt(negatives), num_videos_per_prompt, 0)
            context = ops.concat((uncond, context), 0)
        latents = sample(lambda x, t: self.denoise(x, t, context, guidance_scale), self.scheduler, latents,
                         num_inference_steps, eta, rng)
        return TuneAVideoPipelineOutput(videos=self.decode_latents(latents))

    @staticmethod
    def _initial_latents(latents, shape, rng):
        if latents is None:
            return ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        latents = as_tensor(latents)
        if tuple(latents.shape) == shape:
            return latents
        if latents.shape[0] == 1 and tuple(latents.shape[1:]) == shape[1:]:
            # one inverted clip edited with several prompts
            return ops.broadcast_to(latents, shape)
        raise ValueError(f"latents have shape {tuple(latents.shape)}; "
                         f"video_length, height and width ask for {shape}")
