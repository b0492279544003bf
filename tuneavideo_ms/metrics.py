"""The LOVEU-TGVE-2023 benchmark's metrics of an edited video, with CLIP models on MindSpore.

Frames are resized to `resize` x `resize` (as the benchmark's evaluation does with PIL), then go through the
CLIP model's own preprocessing (its preprocessor_config.json); prompts through its tokenizer.
- frame consistency: the mean cosine similarity of the image embeddings over all ordered pairs of distinct
  frames, x100;
- text alignment: CLIP's logit of each frame for the prompt (logit_scale.exp() times the cosine of the frame's
  and the prompt's embeddings), averaged over the frames;
- PickScore: the same logit from a PickScore model (a CLIP model fine-tuned on human preferences).
"""
import os
from typing import Optional

import mindspore as ms
import numpy as np

from . import hub
from .models.clip import CLIPModel
from .models.modeling import model_folder, read_config

METRICS = ("frame_consistency", "text_alignment", "pick_score")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# what a CLIP model's Hub repo holds that this reads (not its PyTorch, TensorFlow and Flax copies)
CLIP_DOWNLOAD = ["*.json", "*.txt", "*.safetensors"]


def check_clip_folder(path, option, processor_path=None):
    """The local folder of a CLIP model (a folder or a cached Hub id) after checking, before anything loads,
    that it holds a transformers CLIPModel config and (in `processor_path`, by default the same folder) its
    image processor and tokenizer; `option` names the setting in errors."""
    try:
        folder = model_folder(hub.resolve(path, CLIP_DOWNLOAD))
        config = read_config(folder)
    except (OSError, ValueError) as e:
        raise type(e)(f"{option} {path}: {e}") from None
    if config.get("model_type") != "clip" or "vision_config" not in config:
        raise ValueError(f"{option} {path}: not a CLIP model (its config.json has model_type "
                         f"{config.get('model_type')!r}; a CLIP model folder as transformers saves one, e.g. "
                         "openai/clip-vit-large-patch14, has model_type 'clip')")
    processor = model_folder(hub.resolve(processor_path, CLIP_DOWNLOAD)) if processor_path else folder
    wanted = ("preprocessor_config.json",) + TOKENIZER_FILES
    missing = [name for name in wanted if not os.path.isfile(os.path.join(processor, name))]
    if missing:
        raise FileNotFoundError(f"{option} {processor_path or path}: no {', '.join(missing)} (the CLIP "
                                "processor: image preprocessing and tokenizer)")
    return folder, processor


def check_metric_models(clip_model_path, pickscore_model_path=None, pickscore_processor_path=None,
                        setting=lambda name: f"--{name}"):
    """check_clip_folder for the models a VideoEvaluator would load; `setting(name)` names the option or
    config key in errors."""
    if pickscore_model_path and not clip_model_path:
        raise ValueError(f"{setting('pickscore_model_path')} is set without {setting('clip_model_path')}: "
                         "PickScore comes with the CLIP metrics")
    if clip_model_path:
        check_clip_folder(clip_model_path, setting("clip_model_path"))
    if pickscore_model_path:
        check_clip_folder(pickscore_model_path, setting("pickscore_model_path"), pickscore_processor_path)


class CLIPScorer:
    """A CLIP model with its image processor and tokenizer: embeddings of frames and prompts, in graph mode
    (one graph per frame count, kept by the compile cache)."""

    def __init__(self, model_path, processor_path=None, option="--clip_model_path", resize=480):
        from transformers import CLIPImageProcessor, CLIPTokenizer

        from .pipelines import ModelGraph
        folder, processor = check_clip_folder(model_path, option, processor_path)
        self.model = CLIPModel.from_pretrained(folder)
        self.image_processor = CLIPImageProcessor.from_pretrained(processor)
        self.tokenizer = CLIPTokenizer.from_pretrained(processor)
        self.resize = resize
        self.logit_scale = float(np.exp(self.model.logit_scale.asnumpy()))
        self._images = ModelGraph(self.model, "get_image_features", f"the CLIP image encoder ({model_path})")
        self._text = ModelGraph(self.model, "get_text_features", f"the CLIP text encoder ({model_path})")

    def pixel_values(self, frames):
        """RGB uint8 frames [height, width, 3] -> the model's input [n, 3, size, size]."""
        from PIL import Image
        images = [Image.fromarray(np.asarray(f)).resize((self.resize, self.resize)) for f in frames]
        return self.image_processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)

    def image_embeddings(self, frames):
        """[n, projection_dim] float32, one per frame (not normalised)."""
        return self._images(ms.Tensor(self.pixel_values(frames))).asnumpy()

    def text_embedding(self, prompt):
        """[projection_dim] float32 of the prompt (not normalised); padded to the model's length, which
        changes nothing under CLIP's causal mask and keeps one graph for every prompt."""
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="np").input_ids
        return self._text(ms.Tensor(ids.astype(np.int32))).asnumpy()[0]

    def logits(self, image_embeds, prompt):
        """CLIP's logit of each frame for `prompt`: logit_scale.exp() * cosine."""
        images = _normalised(image_embeds)
        return self.logit_scale * images @ _normalised(self.text_embedding(prompt))


def _normalised(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def frame_consistency(image_embeds):
    """Mean cosine similarity over ordered pairs of distinct frames, x100."""
    n = len(image_embeds)
    check_frame_count(n)
    e = _normalised(image_embeds)
    similarity = e @ e.T
    return float((similarity.sum() - np.trace(similarity)) / (n * (n - 1)) * 100)


class VideoEvaluator:
    """The benchmark's metrics of videos: CLIP's (frame consistency, text alignment) and, with a PickScore
    model, PickScore."""

    def __init__(self, clip_model_path, pickscore_model_path: Optional[str] = None,
                 pickscore_processor_path: Optional[str] = None, resize=480):
        self.clip = CLIPScorer(clip_model_path, resize=resize)
        self.pickscore = CLIPScorer(pickscore_model_path, pickscore_processor_path, "--pickscore_model_path",
                                    resize) if pickscore_model_path else None

    def __call__(self, frames, prompt):
        """{metric: value} of one video's RGB uint8 frames [height, width, 3] for `prompt`."""
        check_prompt(prompt)
        check_frame_count(len(frames))
        embeds = self.clip.image_embeddings(frames)
        scores = {"frame_consistency": frame_consistency(embeds),
                  "text_alignment": float(self.clip.logits(embeds, prompt).mean())}
        if self.pickscore:
            scores["pick_score"] = float(self.pickscore.logits(self.pickscore.image_embeddings(frames),
                                                               prompt).mean())
        return scores


def check_frame_count(n, video="the video"):
    if n < 2:
        raise ValueError(f"{video} has {n} frame{'s' if n != 1 else ''}: frame consistency compares frames, "
                         "it needs at least 2")


def check_prompt(prompt):
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: text alignment and PickScore score a video against its prompt")


def mean_scores(rows):
    """{metric: mean} over dicts of scores (the metrics every row has)."""
    keys = [k for k in METRICS if rows and all(k in r for r in rows)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def format_scores(scores):
    return "  ".join(f"{k} {v:.2f}" for k, v in scores.items() if k in METRICS)
