"""One-shot tuning of a video UNet on one clip (the original's train_tuneavideo.py).

The clip is encoded once; each step draws a latent from its cached posterior,
noise and a timestep per sample, and trains the parameters named by
`trainable_modules` to predict the noise (or v). Every random draw is keyed by
(seed, step, global sample index): a resumed run repeats an uninterrupted one
bit for bit, and N data-parallel workers draw what one process with N times
the batch draws.
"""
import json
import logging
import os
import re
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import runtime
from .atomic import atomic_dir, atomic_file
from .config import check_paths, resolve_checkpoint
from .data import read_video
from .editing import invert_clip, sample_edits
from .models import UNet3DConditionModel
from .models.attention import Transformer3DModel
from .models.resnet import ResnetBlock3D
from .optim import AdamW, hyper_map, lr_lambda
from .pipelines import TuneAVideoPipeline
from .runtime.attention import make_recomputable
from .runtime.compile_cache import CachedCompile
from .sampling import make_scheduler
from .schedulers import noisy_sample, velocity
from .weights import read_state_dict, save_safetensors

logger = logging.getLogger(__name__)
INITIAL_LOSS_SCALE = 2.0 ** 16  # torch.cuda.amp.GradScaler's defaults
LOSS_SCALE_GROWTH_INTERVAL = 2000


# ----------------------------------------------------------------------------- model set-up

def trainable_parameters(unet, trainable_modules):
    """Marks the parameters whose names contain one of `trainable_modules` as
    trainable and freezes the rest (no gradient, no optimizer state)."""
    params = []
    for name, param in unet.parameters_and_names():
        param.requires_grad = any(module in name for module in trainable_modules)
        if param.requires_grad:
            params.append(param)
    if not params:
        raise ValueError("no UNet parameter name contains any of trainable_modules "
                         f"{list(trainable_modules)}")
    return params


def enable_gradient_checkpointing(unet):
    """Recomputes every transformer and resnet block in the backward pass.
    Unlike torch's reentrant checkpoint (which the original uses, and which
    drops the gradients of parameters inside blocks whose inputs need no
    gradient), recompute gives every trainable parameter its gradient."""
    make_recomputable(unet)
    for _, cell in unet.cells_and_names():
        if isinstance(cell, (Transformer3DModel, ResnetBlock3D)):
            cell.recompute()


def draw_batch(seed, step, sample_indices, latent_shape, num_train_timesteps):
    """The posterior noise, diffusion noise and timestep of each sample, from
    a generator keyed by (seed, step, global sample index)."""
    vae_noise, noise, timesteps = [], [], []
    for index in sample_indices:
        rng = np.random.default_rng([seed, step, index])
        vae_noise.append(rng.standard_normal(latent_shape, dtype=np.float32))
        noise.append(rng.standard_normal(latent_shape, dtype=np.float32))
        timesteps.append(rng.integers(0, num_train_timesteps))
    return np.stack(vae_noise), np.stack(noise), np.array(timesteps)


def clip_grad_norm(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_'s rule: scale by max_norm / (norm + 1e-6)
    when that is below 1. ops.clip_by_global_norm has no 1e-6 and divides every
    gradient, and MindSpore 2.10's CPU Div holds several times its output for
    as long as the graph lives."""
    norm = ops.sqrt(ops.addn(hyper_map(_square_sum, grads)))
    scale = ops.minimum(max_norm / (norm + 1e-6), 1.0)
    return hyper_map(ops.partial(_scale, scale), grads)


def _square_sum(g):
    return ops.square(g.astype(ms.float32)).sum()


def _scale(factor, g):
    return g * factor.astype(g.dtype)


class TrainStep(CachedCompile, nn.Cell):
    """The numerics of one optimizer step as one compiled graph (in graph
    mode): loss and gradients over the micro-batches, the gradient check,
    clipping and AdamW. When the gradients are not finite (an fp16 overflow)
    the update is masked out and the step reports it, so the host can skip it.

    Gradients never leave the graph: MindSpore 2.10 re-traces a jitted
    function on every call that takes a tuple of a hundred tensors. A cell:
    MindSpore's compile cache binds a loaded graph's parameters through its
    cell (loaded from the cache, a jitted method of a plain object read none
    of them: wrong losses, no update)."""

    graph_name = "the training step"

    def __init__(self, unet, params, optimizer, prediction_type, scaling_factor, max_grad_norm,
                 grad_reducer=None):
        super().__init__(auto_prefix=False)  # the parameters keep their names (checkpoints go by them)
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"cannot train a {prediction_type!r} model (epsilon or v_prediction)")
        self.unet, self.optimizer = unet, optimizer
        self.v_prediction = prediction_type == "v_prediction"
        self.scaling_factor, self.max_grad_norm = scaling_factor, max_grad_norm
        self.grad_reducer = grad_reducer
        self.grad_fn = ms.value_and_grad(self.loss, None, params, has_aux=True)

    def loss(self, mean, std, vae_noise, noise, sqrt_alpha, sqrt_one_minus_alpha, timesteps, context,
             loss_scale):
        latents = (mean + std * vae_noise) * self.scaling_factor
        noisy = noisy_sample(latents, noise, sqrt_alpha, sqrt_one_minus_alpha)
        target = velocity(latents, noise, sqrt_alpha, sqrt_one_minus_alpha) if self.v_prediction else noise
        b = noisy.shape[0]
        context = ops.broadcast_to(context, (b, context.shape[1], context.shape[2]))
        pred = self.unet(noisy, timesteps, context).astype(ms.float32)
        loss = ((pred - target) ** 2).mean()
        return loss * loss_scale, loss

    def construct(self, mean, std, vae_noise, noise, sqrt_alpha, sqrt_one_minus_alpha, timesteps, context,
                  loss_scale, lr):
        """Inputs other than mean, std, context, loss_scale and lr carry a
        leading micro-batch axis; gradients are averaged over micro-batches."""
        micro_batches = vae_noise.shape[0]
        total, grads = 0.0, None
        for k in range(micro_batches):
            (_, loss), g = self.grad_fn(mean, std, vae_noise[k], noise[k], sqrt_alpha[k],
                                        sqrt_one_minus_alpha[k], timesteps[k], context, loss_scale)
            total = total + loss
            grads = g if grads is None else hyper_map(ops.add, grads, g)
        grads = hyper_map(ops.partial(_scale, 1.0 / (loss_scale * micro_batches)), grads)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
        # all_finite, not isfinite(sum): fp16 saturates instead of overflowing on 910A and under
        # MS_ASCEND_CHECK_OVERFLOW_MODE=SATURATION_MODE, and all_finite checks in either mode
        finite = ms.amp.all_finite(grads)
        self.optimizer(clip_grad_norm(grads, self.max_grad_norm), lr, finite)
        return total / micro_batches, finite


class LossScaler:
    """Dynamic loss scaling for fp16 (torch's GradScaler rules); a fixed 1 otherwise."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.scale = INITIAL_LOSS_SCALE if enabled else 1.0
        self.good_steps = 0

    def update(self, finite):
        if not self.enabled:
            return
        if finite:
            self.good_steps += 1
            if self.good_steps % LOSS_SCALE_GROWTH_INTERVAL == 0:
                self.scale *= 2.0
        else:
            self.scale /= 2.0
            self.good_steps = 0

    def state(self):
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state(self, state):
        self.scale, self.good_steps = state["scale"], state["good_steps"]


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(output_dir):
    """The newest complete checkpoint folder, or None. Folders still being
    written have temporary names, and a complete one holds state.json."""
    if not os.path.isdir(output_dir):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT.match(name))
             and os.path.isfile(os.path.join(output_dir, name, "state.json"))]
    return os.path.join(output_dir, max(found)[1]) if found else None


def save_checkpoint(output_dir, step, params, optimizer, scaler, seed):
    path = os.path.join(output_dir, f"checkpoint-{step}")
    with atomic_dir(path) as tmp:
        save_safetensors(os.path.join(tmp, "trainable.safetensors"), {p.name: p.asnumpy() for p in params})
        save_safetensors(os.path.join(tmp, "optimizer.safetensors"), optimizer.state())
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"step": step, "seed": seed, "loss_scale": scaler.state()}, f, indent=2)
    logger.info("saved %s", path)
    return path


def load_checkpoint(path, params, optimizer, scaler):
    """Restores the trainable weights, optimizer and loss scale; returns (step, seed)."""
    state_path = os.path.join(path, "state.json")
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no state.json)")
    with open(state_path) as f:
        state = json.load(f)
    weights = read_state_dict(os.path.join(path, "trainable.safetensors"))
    names = {p.name for p in params}
    if set(weights) != names:
        raise ValueError(f"{path} trains other parameters than this config: "
                         f"{sorted(set(weights) ^ names)[:5]} differ")
    for p in params:
        p.set_data(ms.Tensor(weights[p.name].reshape(p.shape)))  # a convolution saved on another backend
    optimizer.load_state(read_state_dict(os.path.join(path, "optimizer.safetensors")))
    scaler.load_state(state["loss_scale"])
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state["step"], state["seed"]


# ----------------------------------------------------------------------------- validation

def validate(pipe, clip_latents, validation_data, output_dir, step, seed, evaluate=None):
    """Inverts the clip's latents (the scaled posterior mean) and samples the validation prompts; with
    `evaluate` (a metrics.VideoEvaluator), scores them into samples/metrics.json (step -> the scores)."""
    v = validation_data
    latents = None
    if v.use_inv_latent:
        latents = invert_clip(pipe, clip_latents, v.num_inv_steps,
                              save_path=os.path.join(output_dir, "inv_latents", f"ddim_latent-{step}.npy"))
    samples = os.path.join(output_dir, "samples")
    paths = sample_edits(pipe, list(v.prompts), os.path.join(samples, f"sample-{step}"), latents=latents,
                         grid_path=os.path.join(samples, f"sample-{step}.gif"), evaluate=evaluate,
                         video_length=v.video_length, height=v.height, width=v.width,
                         num_inference_steps=v.num_inference_steps, guidance_scale=v.guidance_scale,
                         negative_prompt=v.negative_prompt, seed=seed)
    if evaluate is not None:
        _record_scores(os.path.join(samples, "metrics.json"), step, paths[-1])
    return paths


def _record_scores(path, step, scores_path):
    """Adds one validation's scores (sample_edits' metrics.json) to the run's record under its step."""
    record = {}
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
    with open(scores_path) as f:
        record[str(step)] = json.load(f)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)


# ----------------------------------------------------------------------------- the loop

def _log_to_file(path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("tuneavideo_ms").addHandler(handler)
    logging.getLogger("tuneavideo_ms").setLevel(logging.INFO)
    return handler


def data_parallel():
    """(rank, world size): under msrun, after joining its workers for data
    parallelism (gradients averaged); (0, 1) when run alone."""
    if "MS_ROLE" not in os.environ:
        return 0, 1
    # under msrun even one worker joins: msrun's scheduler process runs this script too,
    # and init() is what keeps it from training beside the worker
    from mindspore.communication import get_group_size, get_rank, init
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def _shared_seed(seed, rank, world_size):
    """Worker 0's seed on every worker. Split in 16-bit halves: the CPU
    AllReduce takes only floats, exact up to 2**24."""
    if world_size == 1:
        return seed
    halves = np.array([seed >> 16, seed & 0xFFFF], np.float32) if rank == 0 else np.zeros(2, np.float32)
    halves = ops.AllReduce()(ms.Tensor(halves)).asnumpy().astype(np.int64)
    return int(halves[0]) << 16 | int(halves[1])


def main(config: DictConfig) -> str:
    """Tunes a video UNet as `config` (see config.py) says, data-parallel over
    msrun's workers when launched by msrun; returns the output folder. Only
    worker 0 writes checkpoints, validation samples, the tuned UNet and train.log.
    The config's paths and the clip are checked before anything is written."""
    c = config
    check_paths(c)
    pixels = read_video(c.train_data.video_path, c.train_data.n_sample_frames, c.train_data.width,
                        c.train_data.height, c.train_data.sample_start_idx, c.train_data.sample_frame_rate,
                        c.train_data.crop)
    runtime.setup(c.device, c.mode)
    if c.mixed_precision == "bf16":
        runtime.check_dtype(ms.bfloat16)
    rank, world_size = data_parallel()
    os.makedirs(c.output_dir, exist_ok=True)
    handler = _log_to_file(os.path.join(c.output_dir, "train.log")) if rank == 0 else None
    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            return _train(c, pixels, rank, world_size)
    except BaseException as e:
        logger.error("the run stopped: %s: %s", type(e).__name__, e,
                     exc_info=not isinstance(e, KeyboardInterrupt))
        raise
    finally:
        if handler is not None:
            logging.getLogger("tuneavideo_ms").removeHandler(handler)
            handler.close()


def _train(c, pixels, rank, world_size):
    seed = c.seed
    if seed is None:
        seed = _shared_seed(int(np.random.SeedSequence().entropy % 2 ** 32), rank, world_size)
    unet = UNet3DConditionModel.from_pretrained_2d(c.pretrained_model_path, subfolder="unet")
    pipe = TuneAVideoPipeline.from_pretrained(c.pretrained_model_path, unet=unet)
    noise_scheduler = pipe.scheduler  # training reads only its noise schedule, which sampling never changes
    pipe.scheduler = make_scheduler(c.validation_data.scheduler, noise_scheduler)

    # the frozen parts run once: the clip's posterior and the prompt's embedding
    mean, std = pipe.encode_posterior(pixels[None])
    context = pipe.encode_prompt(c.train_data.prompt)
    latent_shape = tuple(mean.shape[1:])

    params = trainable_parameters(unet, c.trainable_modules)
    if c.gradient_checkpointing:
        enable_gradient_checkpointing(unet)
    if c.mixed_precision != "no":
        unet.to_float(ms.float16 if c.mixed_precision == "fp16" else ms.bfloat16)
    learning_rate = c.learning_rate
    if c.scale_lr:
        learning_rate *= c.gradient_accumulation_steps * c.train_batch_size * world_size
    optimizer = AdamW(params, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_epsilon,
                      weight_decay=c.adam_weight_decay)
    schedule = lr_lambda(c.lr_scheduler, c.lr_warmup_steps, c.max_train_steps)
    scaler = LossScaler(c.mixed_precision == "fp16")
    grad_reducer = nn.DistributedGradReducer(params, mean=True, degree=world_size) if world_size > 1 else None
    step_fn = TrainStep(unet, params, optimizer, noise_scheduler.config["prediction_type"],
                        pipe.vae.config.scaling_factor, c.max_grad_norm, grad_reducer=grad_reducer)

    step = 0
    if c.resume_from_checkpoint:
        latest = c.resume_from_checkpoint == "latest"
        path = latest_checkpoint(c.output_dir) if latest else resolve_checkpoint(c)
        if path is None:
            logger.info("no checkpoint in %s; starting a new run", c.output_dir)
        else:
            step, seed = load_checkpoint(path, params, optimizer, scaler)

    logger.info("tuning %d tensors (%d values) of the UNet on %s: %d steps, batch %d x %d micro-batches x %d "
                "workers, seed %d", len(params), sum(p.size for p in params), c.train_data.video_path,
                c.max_train_steps, c.train_batch_size, c.gradient_accumulation_steps, world_size, seed)
    v = c.validation_data
    evaluate = None
    if rank == 0 and v.prompts and v.clip_model_path:  # loaded first: a broken model fails before any step
        from .metrics import VideoEvaluator
        evaluate = VideoEvaluator(v.clip_model_path, v.pickscore_model_path, v.pickscore_processor_path)
    failed_validations = []
    bar = tqdm(total=c.max_train_steps, initial=step, desc="steps", disable=rank != 0)
    while step < c.max_train_steps:
        step += 1
        vae_noise, noise, timesteps = [], [], []
        for k in range(c.gradient_accumulation_steps):
            first = (k * world_size + rank) * c.train_batch_size
            drawn = draw_batch(seed, step, range(first, first + c.train_batch_size), latent_shape,
                               noise_scheduler.config["num_train_timesteps"])
            vae_noise.append(drawn[0])
            noise.append(drawn[1])
            timesteps.append(drawn[2])
        timesteps = np.stack(timesteps)
        alpha = noise_scheduler.alphas_cumprod[timesteps].reshape(timesteps.shape + (1, 1, 1, 1))
        lr = learning_rate * schedule(step - 1)
        loss, finite = step_fn(
            mean, std, ms.Tensor(np.stack(vae_noise)), ms.Tensor(np.stack(noise)), ms.Tensor(alpha ** 0.5),
            ms.Tensor((1 - alpha) ** 0.5), ms.Tensor(timesteps.astype(np.float32)), context,
            ms.Tensor(scaler.scale, ms.float32), ms.Tensor(lr, ms.float32))
        loss, finite = float(loss.asnumpy()), bool(finite.asnumpy())
        if not finite and scaler.enabled:
            logger.warning("step %d: gradients overflowed in fp16; step skipped, loss scale %g -> %g",
                           step, scaler.scale, scaler.scale / 2)
        elif not finite:
            last = latest_checkpoint(c.output_dir)
            raise FloatingPointError(f"loss is {loss} at step {step} (non-finite gradients); stopping. "
                                     f"Last checkpoint: {last or 'none'}")
        scaler.update(finite)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        logger.info("step %d loss %.6f lr %.3e", step, loss, lr)
        if rank != 0:
            continue
        if step % c.checkpointing_steps == 0:
            save_checkpoint(c.output_dir, step, params, optimizer, scaler, seed)
        if step == c.max_train_steps:
            save_tuned(c, unet, seed)  # the finished work is on disk before the last validation
        if v.prompts and (step % c.validation_steps == 0 or step == c.max_train_steps):
            start = time.time()
            try:
                validate(pipe, mean * pipe.vae.config.scaling_factor, v, c.output_dir, step, seed, evaluate)
            except Exception:  # noqa: BLE001 - whatever breaks in sampling, the run and its weights go on
                logger.exception("validation at step %d failed; training goes on", step)
                failed_validations.append(step)
            else:
                logger.info("validation at step %d took %.1f s", step, time.time() - start)
            bar.unpause()  # the steps' rate leaves the validation's time out
    bar.close()
    if rank == 0 and not os.path.isdir(os.path.join(c.output_dir, "unet")):
        save_tuned(c, unet, seed)  # a run resumed at its last step
    if failed_validations:
        logger.warning("validation failed at step %s (the tracebacks are in train.log); "
                       "the tuned UNet is in %s",
                       ", ".join(map(str, failed_validations)), os.path.join(c.output_dir, "unet"))
    return c.output_dir


def save_tuned(c, unet, seed):
    """The tuned UNet (a save_pretrained folder) and the run's config, seed included."""
    unet.save_pretrained(os.path.join(c.output_dir, "unet"))
    with atomic_file(os.path.join(c.output_dir, "config.yaml")) as tmp:
        OmegaConf.save(OmegaConf.merge(c, {"seed": seed}), tmp)
    logger.info("tuned UNet written to %s", os.path.join(c.output_dir, "unet"))
