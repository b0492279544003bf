"""CLIP (Radford et al., 2021) with transformers' parameter names, reading CLIPModel folders (config.json and
model.safetensors or pytorch_model.bin) without torch: the vision transformer, the text transformer Stable
Diffusion's text encoder shares, their projections into one embedding space and the logit scale. The
evaluation metrics (metrics.py) score frames and prompts with it."""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..weights import TRANSFORMERS_WEIGHTS
from .layers import Embedding
from .modeling import ModelMixin
from .normalization import LayerNorm
from .text_encoder import DEFAULTS as TEXT_DEFAULTS, CLIPEncoder, CLIPTextTransformer, clip_config

# transformers' CLIPVisionConfig defaults (ViT-B/32)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5)
# CLIPModel's own fields besides its two towers'
MODEL_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592, text_config=None, vision_config=None)
MODEL_IGNORED = ("architectures", "initializer_factor", "model_type", "torch_dtype", "dtype",
                 "transformers_version", "text_config_dict", "vision_config_dict")


class CLIPVisionEmbeddings(nn.Cell):
    """The image cut into patch_size squares, each projected to a token, after a learned class token; plus
    learned position embeddings."""

    def __init__(self, c):
        super().__init__()
        self.class_embedding = Parameter(Tensor(np.random.normal(0, 0.02, c.hidden_size).astype(np.float32)),
                                         name="class_embedding")
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size,
                                         pad_mode="valid", has_bias=False)
        self.position_embedding = Embedding((c.image_size // c.patch_size) ** 2 + 1, c.hidden_size, std=0.02)

    def construct(self, pixel_values):
        patches = self.patch_embedding(pixel_values)  # [b, hidden, grid, grid]
        b, hidden = patches.shape[0], patches.shape[1]
        patches = patches.reshape(b, hidden, -1).transpose(0, 2, 1)
        cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, hidden), (b, 1, hidden))
        return ops.concat((cls, patches), 1) + self.position_embedding.weight.expand_dims(0)


class CLIPVisionTransformer(nn.Cell):
    """pixel values [b, channels, size, size] -> (last hidden state, pooled: the class token's)."""

    def __init__(self, c):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(c)
        self.pre_layrnorm = LayerNorm(c.hidden_size, c.layer_norm_eps)  # sic: transformers' name
        self.encoder = CLIPEncoder(c)
        self.post_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps)

    def construct(self, pixel_values):
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)), None)
        return x, self.post_layernorm(x[:, 0])


def _tower(config, name):
    """A tower's config: transformers' `<name>_config`, updated by the `<name>_config_dict` of configs written
    by transformers before 4.22 (transformers gives the second precedence too)."""
    return {**(config.get(f"{name}_config") or {}), **(config.get(f"{name}_config_dict") or {})}


class CLIPModel(ModelMixin, nn.Cell):
    """transformers' CLIPModel: get_image_features(pixel_values) and get_text_features(input_ids) give the
    projected embeddings, `logit_scale` the log of the temperature CLIP multiplies their cosines by."""

    weight_names = TRANSFORMERS_WEIGHTS

    def __init__(self, **config):
        super().__init__()
        c = clip_config("CLIP model", MODEL_DEFAULTS, config, MODEL_IGNORED)
        self.text_config = clip_config("CLIP text model", TEXT_DEFAULTS, _tower(config, "text"))
        self.vision_config = clip_config("CLIP vision model", VISION_DEFAULTS, _tower(config, "vision"))
        self.config = c
        c.update(text_config=self.text_config, vision_config=self.vision_config)
        self.text_model = CLIPTextTransformer(self.text_config)
        self.vision_model = CLIPVisionTransformer(self.vision_config)
        self.text_projection = nn.Dense(self.text_config.hidden_size, c.projection_dim, has_bias=False)
        self.visual_projection = nn.Dense(self.vision_config.hidden_size, c.projection_dim, has_bias=False)
        self.logit_scale = Parameter(Tensor(np.float32(c.logit_scale_init_value)), name="logit_scale")

    def get_image_features(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values)[1])

    def get_text_features(self, input_ids):
        return self.text_projection(self.text_model(input_ids.astype(ms.int32))[1])
