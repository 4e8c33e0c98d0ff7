"""bf16 weights with fp32 master copies in the optimizer (``optim.master_weights``).

Under bf16 autocast every fp32 Linear weight is cast to bf16 in the forward, again in the backward, and
its bf16 gradient back up to fp32: three passes over the weights a step. ``linear_weights_to_bf16``
stores those weights in bf16 instead and hands their fp32 values to ``MasterWeightAdamW``, which keeps
them as masters and updates them in fp32 (``flowhn.kernels.adamw``: one kernel a parameter). The
forward sees the same bf16 weights autocast made, the weight gradients are the same bf16 products, so a
run takes the same steps (tests/test_master_weights.py) in less time. Weights tied to an embedding stay
fp32 (the lookup is not autocast: a bf16 table would start a bf16 residual stream whatever
``residual_dtype`` says), and so does the LM head.

Checkpoints keep today's format: the training module writes the masters as the model's weights and
leaves them out of the optimizer's state; on load it puts them back (``CausalLMModule._weights_from_masters``
and ``_masters_from_weights``), so a checkpoint resumes with or without master weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from flowhn.kernels.adamw import adamw_step_

LOW_PRECISION = torch.bfloat16


def linear_weights_to_bf16(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """Every fp32 nn.Linear weight stored in bf16 (in place) but one shared with an nn.Embedding and the
    model's ``lm_head`` (the fused loss sums its gradient over chunks of tokens in fp32 and would round it
    for a bf16 weight); returns {parameter: its fp32 values}, the masters to start the optimizer from."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        embedded.add(id(head.weight))
    masters: dict[nn.Parameter, torch.Tensor] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or id(weight) in embedded or weight in masters:
            continue
        if weight.dtype == torch.float32:
            masters[weight] = weight.data
            weight.data = weight.data.to(LOW_PRECISION)
    return masters


class MasterWeightAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update for parameters of any float dtype: a parameter that is not fp32 is
    updated through an fp32 master copy in its state (``"master"``) and receives the master's rounding;
    an fp32 one is its own master. Moments are fp32 whatever the parameter's dtype.

    ``masters``: {parameter: fp32 tensor} to start from (``linear_weights_to_bf16``'s); a parameter
    that is not fp32 and has none starts from its own values. Before ``step()`` the caller may set
    ``found_inf`` (0-d tensor; non-zero skips the step on the device, as torch's fused AdamW) and
    ``grad_multiplier`` (0-d fp32; the gradient-clip coefficient, applied inside the update instead
    of in a pass over the gradients); ``step()`` clears both."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 masters: dict | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.found_inf: torch.Tensor | None = None
        self.grad_multiplier: torch.Tensor | None = None
        masters = masters or {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
                state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
                if p.dtype != torch.float32:
                    start = masters.get(p)
                    start = p.detach() if start is None else start
                    state["master"] = start.to(device=p.device, dtype=torch.float32).contiguous()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf, multiplier = self.found_inf, self.grad_multiplier
        self.found_inf = self.grad_multiplier = None
        advance = 1.0 if found_inf is None else 1.0 - found_inf.float()  # a skipped step is not counted
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            steps = [self.state[p]["step"] for p in params]
            torch._foreach_add_(steps, advance)
            beta1, beta2 = group["betas"]
            for p in params:
                state = self.state[p]
                adamw_step_(p, p.grad.contiguous(), state.get("master"), state["exp_avg"], state["exp_avg_sq"],
                            state["step"], lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                            weight_decay=group["weight_decay"], grad_multiplier=multiplier, found_inf=found_inf)
        return loss

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_'s coefficient over every gradient, computed in fp32 and handed
        to the next ``step()`` instead of multiplied into the gradients; returns the total norm."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)
        total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        self.grad_multiplier = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return total

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts every loaded floating-point state tensor to its parameter's dtype, which would round
        # the moments and the masters of bf16 parameters: load the groups through it, the state here.
        saved = state_dict["state"]
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for i, p in zip(ids, params):
            if i in saved:
                self.state[p] = {k: v.to(device=p.device, dtype=torch.float32).contiguous() if torch.is_tensor(v) else v
                                 for k, v in saved[i].items()}
                if p.dtype != torch.float32 and "master" not in self.state[p]:
                    self.state[p]["master"] = p.detach().float()


def fp32_allreduce_hook(process_group, bucket):  # no annotations: DDP checks them against its own objects
    """DDP communication hook for bf16 gradients: each bucket (a ``dist.GradBucket``) averaged across ranks
    in fp32 and rounded once, as the fp32 gradients of autocast's weights were (DDP alone would sum them in
    bf16). Returns a future of the bucket's buffer."""
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    wide = buffer.float().div_(group.size())
    future = dist.all_reduce(wide, group=group, async_op=True).get_future()

    def narrow(fut):
        buffer.copy_(fut.value()[0])
        return buffer

    return future.then(narrow)
