"""The diffusers folder of a Stable Diffusion pipeline: its components, each in a subfolder, and the
model_index.json that names their classes."""
import json

# component: (library, class) as model_index.json records them
COMPONENTS = {
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
}


def model_index(class_name, **extra):
    """model_index.json's contents for a pipeline of `class_name` made of COMPONENTS (and `extra`)."""
    return {"_class_name": class_name, **COMPONENTS, **extra}


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
