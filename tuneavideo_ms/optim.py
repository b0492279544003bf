"""AdamW as torch.optim.AdamW computes it (decoupled weight decay, bias
correction), over a subset of parameters, and the original's lr schedules.

MindSpore's nn.AdamWeightDecay has no bias correction, so its steps differ
from the PyTorch original's; this one matches them. On CPU a C++ kernel
(csrc/adamw_cpu.cc) updates each parameter with the same arithmetic."""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from tuneavideo_ms import runtime


# Per-parameter work goes through HyperMap: a graph that builds a list over a
# tuple of N tensors (a loop or comprehension) compiles in O(N^2) in MindSpore
# 2.10; HyperMap in O(N)
hyper_map = ops.HyperMap()


def _adamw_update(betas, one_minus_betas, eps, decay, step_size, inv_bias_correction2_sqrt, update, p, m, v,
                  g):
    g = g.astype(ms.float32)
    m_new = betas[0] * m + one_minus_betas[0] * g
    v_new = betas[1] * v + one_minus_betas[1] * g * g
    # products with reciprocals, and a condition of the tensors' shape:
    # MindSpore 2.10's CPU Div and Select of a scalar condition hold several
    # times the tensor's size for as long as the graph lives
    denom = ops.sqrt(v_new) * inv_bias_correction2_sqrt + eps
    p_new = p * decay - step_size * m_new * ops.reciprocal(denom)
    keep = ops.broadcast_to(update, p.shape)
    ops.assign(m, ops.select(keep, m_new, m))
    ops.assign(v, ops.select(keep, v_new, v))
    ops.assign(p, ops.select(keep, p_new.astype(p.dtype), p))
    return update


def _adamw_kernel_update(kernel, hyper, p, m, v, g):
    """_adamw_update as one C++ kernel (runtime.cpu_kernels.adamw_op)."""
    p_new, m_new, v_new = kernel(p, m, v, g.astype(ms.float32), hyper)
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    ops.assign(p, p_new)
    return hyper


class AdamW(nn.Cell):
    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__()
        self.parameters = ParameterTuple(params)
        self.exp_avg = self.parameters.clone(prefix="exp_avg", init="zeros")
        self.exp_avg_sq = self.parameters.clone(prefix="exp_avg_sq", init="zeros")
        self.step = Parameter(Tensor(0, ms.int32), name="adamw_step")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        # constants taken here in float64, as torch does: a graph computes Python
        # scalars in float32, where 1 - 0.999 is 1.3e-5 off
        self.one_minus_betas = (1 - betas[0], 1 - betas[1])
        self.log_beta1, self.log_beta2 = math.log(betas[0]), math.log(betas[1])
        # on CPU, one C++ kernel per parameter (float32 parameters only), which
        # takes the constants above as the head of its hyper-parameter tensor
        self.kernel = None
        if all(p.dtype == ms.float32 for p in self.parameters):
            self.kernel = runtime.kernels().native("adamw")
            self.constants = Tensor(np.array([self.betas[0], self.one_minus_betas[0], self.betas[1],
                                              self.one_minus_betas[1], eps], np.float32))

    def construct(self, grads, lr, update):
        """One AdamW step; with `update` False (a skipped fp16 step) nothing changes."""
        step = ops.select(update, self.step + 1, self.step)
        ops.assign(self.step, step)
        t = ops.maximum(step.astype(ms.float32), 1.0)
        # 1 - beta ** t without the cancellation of float32's 1 - 0.999 ** t
        bias_correction1 = -ops.expm1(t * self.log_beta1)
        bias_correction2_sqrt = ops.sqrt(-ops.expm1(t * self.log_beta2))
        decay, step_size, inv_bias_correction2_sqrt = 1 - lr * self.weight_decay, lr / bias_correction1, \
            1 / bias_correction2_sqrt
        if self.kernel is not None:
            hyper = ops.concat((self.constants, ops.stack((decay, step_size, inv_bias_correction2_sqrt,
                                                           update.astype(ms.float32)))))
            hyper_map(ops.partial(_adamw_kernel_update, self.kernel, hyper), self.parameters, self.exp_avg,
                      self.exp_avg_sq, grads)
        else:
            hyper_map(ops.partial(_adamw_update, self.betas, self.one_minus_betas, self.eps, decay, step_size,
                                  inv_bias_correction2_sqrt, update),
                      self.parameters, self.exp_avg, self.exp_avg_sq, grads)
        return step

    def state(self):
        """{name: array} of the moments and the step, for checkpoints."""
        state = {p.name: p.asnumpy() for p in list(self.exp_avg) + list(self.exp_avg_sq)}
        state["step"] = np.asarray(self.step.asnumpy()).reshape(())
        return state

    def load_state(self, state):
        for p in list(self.exp_avg) + list(self.exp_avg_sq):
            if p.name not in state:
                raise ValueError(f"optimizer state has no {p.name}")
            p.set_data(Tensor(state[p.name].reshape(p.shape)))
        self.step.set_data(Tensor(int(np.asarray(state["step"]).reshape(-1)[0]), ms.int32))


def lr_lambda(name, warmup_steps, total_steps):
    """The factor on the base learning rate after `step` optimizer steps (diffusers' get_scheduler)."""
    def warmup(step):
        return step / max(1, warmup_steps)

    def progress(step):
        return (step - warmup_steps) / max(1, total_steps - warmup_steps)

    schedules = {
        "constant": lambda s: 1.0,
        "constant_with_warmup": lambda s: warmup(s) if s < warmup_steps else 1.0,
        "linear": lambda s: warmup(s) if s < warmup_steps else max(0.0, 1 - progress(s)),
        "cosine": lambda s: (warmup(s) if s < warmup_steps
                             else max(0.0, 0.5 * (1 + math.cos(math.pi * progress(s))))),
    }
    if name not in schedules:
        raise ValueError(f"unknown lr_scheduler {name!r}; choose one of {', '.join(schedules)}")
    return schedules[name]
