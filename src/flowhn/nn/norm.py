import torch
import torch.nn.functional as F
from torch import nn


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype where autocast is on for x's device, else None."""
    device = x.device.type  # autocast knows no "meta" (FLOP counting builds models there)
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def kept_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a lean RMSNorm keeps x̂ in for its backward: the autocast dtype when fp32 activations run
    under autocast (an fp32 residual stream: residual_dtype=fp32), else x's own."""
    low = autocast_dtype(x)
    return low if x.dtype == torch.float32 and low is not None else x.dtype


def _normalized(x: torch.Tensor, eps: float, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, the inverse RMS (…, groups, 1)) of fp32 x, each of ``groups`` equal slices on its own."""
    grouped = x.unflatten(-1, (groups, -1))
    rstd = torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return (grouped * rstd).flatten(-2), rstd


class _RMSNormKeepingNormalized(torch.autograd.Function):
    """RMSNorm whose backward needs only x̂ in ``kept_dtype``, the inverse RMS and the weight, not the fp32
    input. Its output is weight · x̂ with x̂ rounded to ``kept_dtype`` first (as HF's LlamaRMSNorm rounds to
    the activations' dtype), so the compiled backward can remake the next matmul's bf16 input from the kept
    x̂: under bf16 autocast a norm keeps 2 bytes a feature, not 4. (An output of weight · x̂ in fp32, the
    plain path's, made the partitioner keep both x̂ and the matmul's input: 4 bytes, nothing saved; H200.md,
    twelfth session.) The gradients treat the rounding as the identity (up to 2^-8 relative in x̂: bf16's unit
    roundoff)."""

    @staticmethod
    def forward(ctx, x, weight, eps, groups, kept):
        normed, rstd = _normalized(x.float(), eps, groups)
        normed = normed.to(kept)
        ctx.save_for_backward(normed, rstd, weight)
        ctx.groups, ctx.x_dtype = groups, x.dtype
        return weight * normed.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        normed, rstd, weight = ctx.saved_tensors
        grad, normed = grad.float(), normed.float()
        dweight = (grad * normed).reshape(-1, normed.shape[-1]).sum(0).to(weight.dtype)
        # d/dx of x·rstd(x) per group: rstd · (g − x̂ · mean(g · x̂)), with g the gradient at x̂.
        g = (grad * weight.float()).unflatten(-1, (ctx.groups, -1))
        xhat = normed.unflatten(-1, (ctx.groups, -1))
        dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        return dx.flatten(-2).to(ctx.x_dtype), dweight, None, None, None


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in fp32 (as Llama and Mamba do) so
    bf16 activations don't lose the variance.

    ``groups`` normalises each of that many equal slices of the features on its own, and ``gate``
    multiplies by silu(gate) first: together they are Mamba-2's gated norm (norm_before_gate=False).

    ``keep_normalized`` (scale.lean_activations): without a gate, x̂ is rounded to ``kept_dtype`` before
    the weight, in every mode (training, evaluation), and when gradients are needed the backward keeps
    that x̂ rather than x (``_RMSNormKeepingNormalized``): under bf16 autocast with an fp32 residual
    stream that halves what each norm holds for the backward.
    """

    def __init__(self, dim: int, eps: float = 1e-5, groups: int = 1, keep_normalized: bool = False):
        super().__init__()
        self.eps, self.groups, self.keep_normalized = eps, groups, keep_normalized
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if (self.keep_normalized and gate is None and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad)):
            return _RMSNormKeepingNormalized.apply(x, self.weight, self.eps, self.groups, kept_dtype(x))
        dtype = x.dtype
        rounded_to = kept_dtype(x) if self.keep_normalized and gate is None else dtype
        x = x.float()
        if gate is not None:
            x = x * F.silu(gate.float())
        return self.weight * _normalized(x, self.eps, self.groups)[0].to(rounded_to).to(dtype)
