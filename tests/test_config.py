"""The training config's schema: every mistake is named, with its key, its
value and what would be accepted, before anything loads (no model, no
MindSpore graph: each fails in well under a second)."""
import os

import pytest

from conftest import DEMO_CONFIG
from tuneavideo_ms.config import load_config, resolve_checkpoint

MISTAKES = [
    (["trainable_modules=attn_temp"],
     r"trainable_modules \(command line\): 'attn_temp' is not a list; write a list"),
    (["validation_data.prompts=a cat"], r"validation_data.prompts \(command line\): 'a cat' is not a list"),
    (["learning_rate=abc"],
     r"learning_rate \(command line\): Value 'abc' of type 'str' could not be converted to Float"),
    (["seed=abc"], "seed .*could not be converted to Integer"),
    (["max_train_steps=abc"], "max_train_steps .*could not be converted to Integer"),
    (["max_train_steps=1.5"], "max_train_steps .*could not be converted to Integer"),
    (["train_batch_size=0"], "train_batch_size is 0; it must be a whole number of at least 1"),
    (["gradient_accumulation_steps=0"], "gradient_accumulation_steps is 0"),
    (["checkpointing_steps=0"], "checkpointing_steps is 0"),
    (["validation_steps=-3"], "validation_steps is -3"),
    (["max_train_steps"], r"override 'max_train_steps' is not key=value"),
    (["mixed_precision=fp8"], "mixed_precision is 'fp8'; it must be no or fp16 or bf16"),
    (["validation_data.video_length=8"],
     "validation_data.video_length is 8, but use_inv_latent samples from the inverted clip, "
     "which has train_data.n_sample_frames 4"),
    (["validation_data.width=128"], "validation_data.width is 128, but .* train_data.width 64"),
    (["train_data.width=100"], r"width 100 \(nearest that work: 96 or 104\)"),
    (["seed=-1"], "seed is -1"),
    (["learning_rate=-1"], "learning_rate is -1.0; it must be a positive number"),
    (["adam_beta2=1.0"], r"adam_beta2 is 1.0; it must be in \[0, 1\)"),
    (["mode=eager"], "mode is 'eager'; it must be graph or pynative"),
    (["device=TPU"], "device is 'TPU'"),
    (["lr_scheduler=step"], "lr_scheduler is 'step'; it must be constant or"),
    (["train_data.crop=left"], "train_data.crop is 'left'; it must be null or center"),
    (["validation_data.num_inference_steps=0"], "validation_data.num_inference_steps is 0"),
    (["validation_data.num_inv_steps=0"], "validation_data.num_inv_steps is 0"),
    (["validation_data.guidance_scale=-1"], "guidance_scale is -1.0"),
    (["train_data.n_sample_frames=0"], "train_data.n_sample_frames is 0"),
    (["train_data.sample_start_idx=-1"], "train_data.sample_start_idx is -1"),
    (["train_data=3"], "train_data must be a mapping of video_path, prompt"),
    (["trainable_modules=[]"], r"trainable_modules is \[\]; it must be a list of name parts"),
    (["train_data.video_path=null"], "train_data.video_path .*Incompatible value 'None'"),
    (["scale_lr=maybe"], "scale_lr .*'maybe' is not a valid bool"),
    (["use_8bit_adam=true"], "use_8bit_adam is not available"),
    (["learnig_rate=1"], "unknown config key learnig_rate; did you mean learning_rate"),
]


@pytest.mark.parametrize("overrides,message", MISTAKES, ids=[m[0][0] for m in MISTAKES])
def test_each_mistake_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(DEMO_CONFIG, overrides)


def test_a_yaml_file_is_checked_as_the_command_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrained_model_path: x\noutput_dir: y\ntrain_data:\n  video_path: v\n  prompt: p\n"
                   "trainable_modules: attn_temp\n")
    with pytest.raises(ValueError, match=rf"trainable_modules \({bad}\): 'attn_temp' is not a list"):
        load_config(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="a config is a mapping of keys"):
        load_config(str(bad))


def test_accepted_forms():
    config = load_config(DEMO_CONFIG, ["mixed_precision=no", "learning_rate=3e-5", "seed=33"])
    assert config.mixed_precision == "no" and config.learning_rate == 3e-5
    # sampling from noise (no inversion) may use other frames and sizes than the clip
    load_config(DEMO_CONFIG, ["validation_data.use_inv_latent=false", "validation_data.video_length=8"])


def test_resume_names_a_checkpoint_in_output_dir_as_the_original(tmp_path):
    os.makedirs(tmp_path / "checkpoint-2")
    config = load_config(DEMO_CONFIG, [f"output_dir={tmp_path}", "resume_from_checkpoint=checkpoint-2"])
    assert resolve_checkpoint(config) == os.path.join(str(tmp_path), "checkpoint-2")
