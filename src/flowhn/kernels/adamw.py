"""AdamW on fp32 master weights for a parameter stored in bf16: one tensor's update in one pass.

Under bf16 autocast an fp32 Linear weight is cast to bf16 in the forward, cast again in the backward,
and its bf16 gradient is cast up to fp32 for the optimizer: three passes over the weights a step
(3.3 ms of llama 1B's 208 ms forward + backward on an H200, twentieth session). Stored in bf16, with
the fp32 copy kept by the optimizer, the weight needs none of them: the update reads the bf16 gradient
and the fp32 master, moments, and writes the master, the moments and the bf16 weight (its rounding).
The forward uses exactly the bf16 weight autocast's cast would have made, and the gradient is the same
bf16 product autocast cast up, so training takes the same steps.

``adamw_step_(param, grad, master, exp_avg, exp_avg_sq, step, ...)`` updates in place; ``master`` is
None for an fp32 parameter (it is its own master). ``step`` is the 0-d fp32 step count, already
advanced for this step. ``grad_multiplier`` (0-d fp32, optional) multiplies the gradient first (the
gradient-clip coefficient); ``found_inf`` (0-d, optional), when non-zero, leaves every tensor as it was (a step whose
loss was not finite), as torch's fused AdamW does. The update is torch.optim.AdamW's:

    w ← w (1 − lr·wd);  m ← m + (1 − β1)(g − m);  v ← β2 v + (1 − β2) g²
    w ← w − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε)

Implementations: ``triton_adamw`` (CUDA, or the CPU interpreter with TRITON_INTERPRET=1), and
``adamw_step_reference`` below (PyTorch, fp32 math; every other device).
"""

from __future__ import annotations

from flowhn.kernels import _interpreting


def adamw_step_reference(param, grad, master, exp_avg, exp_avg_sq, step, *, lr: float, beta1: float, beta2: float,
                         eps: float, weight_decay: float, grad_multiplier=None, found_inf=None) -> None:
    if found_inf is not None and found_inf.item() != 0:
        return
    weight = param if master is None else master
    g = grad.float() if grad_multiplier is None else grad.float() * grad_multiplier
    t = step.item()
    weight.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = exp_avg_sq.sqrt() / (1 - beta2**t) ** 0.5 + eps
    weight.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**t))
    if master is not None:
        param.copy_(master)


def adamw_step_(param, grad, master, exp_avg, exp_avg_sq, step, *, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, grad_multiplier=None, found_inf=None) -> None:
    """One AdamW update of one parameter in place (see the module's docstring)."""
    kwargs = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, grad_multiplier=grad_multiplier,
                  found_inf=found_inf)
    if param.is_cuda or _interpreting():
        from flowhn.kernels.triton_adamw import adamw_step_triton

        adamw_step_triton(param, grad, master, exp_avg, exp_avg_sq, step, **kwargs)
    else:
        adamw_step_reference(param, grad, master, exp_avg, exp_avg_sq, step, **kwargs)
