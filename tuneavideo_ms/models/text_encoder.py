"""The CLIP text transformer of Stable Diffusion with transformers' parameter
names (text_model.*), reading text_encoder/ folders without torch."""
import functools

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .. import runtime
from ..weights import TRANSFORMERS_WEIGHTS
from .layers import Embedding, gelu
from .modeling import ModelMixin, build_config
from .normalization import LayerNorm

DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=512, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=1)
# what a CLIP text config.json holds besides the architecture: training and bookkeeping fields
IGNORED = ("architectures", "attention_dropout", "dropout", "initializer_factor", "initializer_range",
           "model_type", "torch_dtype", "dtype", "transformers_version")


@functools.lru_cache(maxsize=None)
def _transformers_fields():
    """The fields transformers gives every model config (generation settings, output flags, ...); asked only
    for a config that holds more than CLIP's, as importing transformers takes seconds."""
    from transformers import PretrainedConfig
    return tuple(PretrainedConfig().to_dict())


def clip_config(kind, defaults, config, ignored=IGNORED):
    """A CLIP config dict (transformers' format) over `defaults`, as build_config makes it; the fields
    transformers writes into every config are ignored too."""
    if any(k not in defaults and k not in ignored and not k.startswith("_") for k in config):
        ignored += _transformers_fields()
    return build_config(kind, defaults, config, ignored)


def _activation(name):
    if name == "quick_gelu":
        return lambda x: x * ops.sigmoid(1.702 * x)
    if name == "gelu":
        return gelu
    raise ValueError(f"unsupported CLIP hidden_act {name!r} (quick_gelu or gelu)")


class CLIPEmbeddings(nn.Cell):
    def __init__(self, c):
        super().__init__()
        self.token_embedding = Embedding(c.vocab_size, c.hidden_size, std=0.02)
        self.position_embedding = Embedding(c.max_position_embeddings, c.hidden_size, std=0.02)

    def construct(self, ids):
        positions = ops.arange(ids.shape[1]).astype(ms.int32)
        return self.token_embedding(ids) + self.position_embedding(positions).expand_dims(0)


class CLIPAttention(nn.Cell):
    def __init__(self, c):
        super().__init__()
        self.heads = c.num_attention_heads
        self.scale = (c.hidden_size // c.num_attention_heads) ** -0.5
        self.q_proj = nn.Dense(c.hidden_size, c.hidden_size)
        self.k_proj = nn.Dense(c.hidden_size, c.hidden_size)
        self.v_proj = nn.Dense(c.hidden_size, c.hidden_size)
        self.out_proj = nn.Dense(c.hidden_size, c.hidden_size)
        self.attention = runtime.kernels().attention()

    def construct(self, x, mask):
        out = self.attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, self.scale, False,
                             mask)
        return self.out_proj(out)


class CLIPMLP(nn.Cell):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Dense(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Dense(c.intermediate_size, c.hidden_size)
        self.act = _activation(c.hidden_act)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    def __init__(self, c):
        super().__init__()
        self.self_attn = CLIPAttention(c)
        self.layer_norm1 = LayerNorm(c.hidden_size, c.layer_norm_eps)
        self.mlp = CLIPMLP(c)
        self.layer_norm2 = LayerNorm(c.hidden_size, c.layer_norm_eps)

    def construct(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Cell):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.CellList([CLIPEncoderLayer(c) for _ in range(c.num_hidden_layers)])

    def construct(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextTransformer(nn.Cell):
    def __init__(self, c):
        super().__init__()
        self.embeddings = CLIPEmbeddings(c)
        self.encoder = CLIPEncoder(c)
        self.final_layer_norm = LayerNorm(c.hidden_size, c.layer_norm_eps)
        n = c.max_position_embeddings
        self.causal_mask = Tensor(np.triu(np.full((n, n), -np.inf, np.float32), 1))
        self.eos_token_id = c.eos_token_id

    def construct(self, ids):
        length = ids.shape[1]
        x = self.encoder(self.embeddings(ids), self.causal_mask[:length, :length])
        x = self.final_layer_norm(x)
        # the pooled token: the end-of-text token (old configs say eos 2: take the largest id, as transformers
        # does)
        if self.eos_token_id == 2:
            eos = ops.argmax(ids, -1)
        else:
            eos = ops.argmax((ids == self.eos_token_id).astype(ms.int32), -1)
        pooled = ops.gather_d(x, 1, ops.broadcast_to(eos.reshape(-1, 1, 1), (x.shape[0], 1, x.shape[2])))
        return x, pooled.squeeze(1)


class CLIPTextModel(ModelMixin, nn.Cell):
    """`model(input_ids)` -> (last_hidden_state, pooler_output), as transformers' CLIPTextModel."""

    weight_names = TRANSFORMERS_WEIGHTS

    def __init__(self, **config):
        super().__init__()
        self.config = clip_config("CLIP text encoder", DEFAULTS, config)
        self.text_model = CLIPTextTransformer(self.config)

    def construct(self, input_ids):
        return self.text_model(input_ids.astype(ms.int32))
