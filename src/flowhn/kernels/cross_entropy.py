"""The LM head and the cross-entropy in one step, without the full-vocabulary logits.

``linear_cross_entropy(hidden, weight, labels)`` is ``F.cross_entropy(hidden @ weight.T, labels,
ignore_index=-100)`` (mean over the labels that are not ignored). The reference computes the
(tokens × vocab) logits and keeps them for the backward: at 135M and 16 × 1024 that is 16,384 × 49,152
logits, 1.6 GB in bf16 plus 3.2 GB for their fp32 copy. The implementations here never hold more
than one chunk of them.

Implementations (``impl``):

* ``chunked`` (ours, any device): tokens in chunks; per chunk the logits, their log-sum-exp, the loss
  and the logits' gradient (softmax − one-hot, scaled by 1/valid tokens), which is turned at once into
  the gradients of ``hidden`` and ``weight`` (two more GEMMs). Only those two gradients are kept for
  the backward, which scales them by the incoming gradient. Plain PyTorch, so ``torch.compile`` fuses
  the per-chunk softmax work and traces it into the surrounding graph.
* ``triton`` (ours, CUDA): the same scheme as one ``torch.library`` custom op with a Triton kernel for
  the rows (``flowhn.kernels.triton_cross_entropy``): no host sync, so a compiled model keeps it in its
  graph and its CUDA graph.
* ``liger``: liger-kernel's ``LigerFusedLinearCrossEntropyFunction`` (the same scheme, Triton
  cross-entropy kernel; CUDA only; calls ``.item()``, so it breaks a compiled graph).
* ``cce``: Apple's cut-cross-entropy (logits never leave SRAM; the backward recomputes them; CUDA
  only). ``filter_eps=None``, so its gradient is exact rather than filtered.
* ``reference``: full logits and ``F.cross_entropy``.
* ``auto``: ``triton`` on CUDA, else ``chunked``. In the 135M bench on an H200 (eighth session, CUDA
  graphs, same process), liger → triton: llama 328,251 → 344,599 tok/s (GPU busy 89 → 96 %), FlowHN
  FAC_Split 357,636 → 385,333 (88 → 95 %); at 1B (no CUDA graphs) llama 77,530 → 77,655. The loss
  alone, earlier (scripts/gpu_speed.py, 16,384 tokens, 576 → 49,152, bf16, forward + backward, an H200
  ): full logits with a compiled cross-entropy 6.02 ms and 3.07 GiB above the inputs; liger (chunk_mem_const=8)
  6.61 ms and 0.38 GiB; ours chunked, compiled 7.55 ms and 3.32 GiB (inductor keeps the chunks'
  buffers alive), eager 22.3 ms; cut-cross-entropy 18.9 ms and 0.18 GiB. All exact to bf16 rounding.

Precision follows the unfused path: under autocast the GEMMs run in the autocast dtype (bf16) and
everything after them (log-sum-exp, softmax, loss) in fp32; the weight's gradient is accumulated in
fp32 across chunks.
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F

from flowhn.kernels import _interpreting

IGNORE_INDEX = -100
IMPLS = ("auto", "triton", "chunked", "liger", "cce", "reference")
# What the ``fused_loss`` setting (train.py, the bench) may name besides auto, true and false.
FUSED_LOSS_IMPLS = ("triton", "liger", "chunked", "cce")


def fused_loss_impl(setting, device_type: str) -> str | None:
    """The implementation a ``fused_loss`` setting means on ``device_type``, None for full logits:
    auto is ``auto`` on CUDA and off elsewhere, true is ``auto``, false is off, a name is itself."""
    if setting == "auto":
        return "auto" if device_type == "cuda" else None
    if setting in FUSED_LOSS_IMPLS:
        return setting
    return "auto" if setting else None


# Logit elements held at once by the chunked implementation (fp32: 4 bytes each, plus the bf16 GEMM
# output): 2**27 is 512 MiB of fp32 logits, about 6 chunks at 135M's 16,384 tokens × 49,152 words.
DEFAULT_CHUNK_ELEMENTS = 2**27


def linear_cross_entropy_reference(hidden, weight, labels, ignore_index: int = IGNORE_INDEX):
    """Full logits (autocast applies to the linear as in the model's LM head), then fp32 cross-entropy."""
    return F.cross_entropy(F.linear(hidden, weight).float(), labels, ignore_index=ignore_index)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the LM head's GEMM runs in: autocast's when it is on, else the inputs' common one."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def chunk_tokens_for(n_tokens: int, vocab: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Tokens per chunk: equal chunks that hold at most ``chunk_elements`` logits each (at least one token)."""
    n_chunks = max(1, -(-n_tokens * vocab // chunk_elements))
    return max(1, -(-n_tokens // n_chunks))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss in the forward; the gradients of hidden and weight computed there too, chunk by chunk,
    so the backward keeps two small tensors (tokens × d, vocab × d) instead of the logits."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index: int, chunk_tokens: int, compute_dtype: torch.dtype):
        n_tokens = hidden.shape[0]
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # Softmax and loss in fp32 (fp64 for fp64 inputs: the tests' reference precision).
        acc_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
        valid = labels != ignore_index
        n_valid = valid.sum()
        # Per-token weight of the mean; an ignored token's is 0 (and stays finite when none is valid,
        # where F.cross_entropy's gradient is 0 too).
        token_scale = valid.to(acc_dtype) / n_valid.clamp(min=1)
        safe_labels = torch.where(valid, labels, 0)
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty((n_tokens, hidden.shape[1]), dtype=compute_dtype, device=hidden.device) if needs_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if needs_grad else None
        # fp32 output of a bf16 GEMM (CUDA) adds the chunk's weight gradient without rounding it to bf16.
        fp32_out = weight.device.type == "cuda" and compute_dtype in (torch.bfloat16, torch.float16)
        loss_sum = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n_tokens, chunk_tokens):
                stop = min(start + chunk_tokens, n_tokens)
                h = hidden[start:stop].to(compute_dtype)
                logits = (h @ w.T).to(acc_dtype)
                lse = torch.logsumexp(logits, dim=-1)
                target = safe_labels[start:stop, None]
                target_logit = logits.gather(1, target).squeeze(1)
                scale = token_scale[start:stop]
                loss_sum = loss_sum + ((lse - target_logit) * valid[start:stop]).sum()
                if not needs_grad:
                    continue
                # d loss / d logits = (softmax − one-hot) / n_valid, 0 for ignored tokens.
                grad_logits = torch.exp(logits - lse[:, None])
                grad_logits = grad_logits.scatter_add(1, target, torch.full_like(target_logit[:, None], -1.0))
                grad_logits = (grad_logits * scale[:, None]).to(compute_dtype)
                grad_hidden[start:stop] = grad_logits @ w
                if fp32_out:
                    grad_weight += torch.mm(grad_logits.T, h, out_dtype=torch.float32)
                else:
                    grad_weight += (grad_logits.T @ h).to(acc_dtype)
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        # 0/0 = nan when no label is valid, as F.cross_entropy gives.
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = (grad_hidden * grad_loss).to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy_chunked(hidden, weight, labels, ignore_index: int = IGNORE_INDEX,
                                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    chunk = chunk_tokens_for(hidden.shape[0], weight.shape[0], chunk_elements)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, ignore_index, chunk, _compute_dtype(hidden, weight))


# Opaque to torch.compile: liger's own Triton kernels run as they are, and its ``.item()`` is not traced.
@torch.compiler.disable
def linear_cross_entropy_liger(hidden, weight, labels, ignore_index: int = IGNORE_INDEX, chunk_mem_const: int = 8):
    """liger-kernel 0.8's function. ``chunk_mem_const``: its chunk holds chunk_mem_const × N × d logits
    (liger's default, 1, is 256 tokens per chunk at 135M: 12.4 ms against 6.6 ms with 8 on an H200)."""
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    dtype = _compute_dtype(hidden, weight)
    # fp32 accumulation of the weight gradient, like ours. Positional, as autograd.Function.apply
    # takes them: input, weight, target, bias, ce_weight, ignore_index, lse_square_scale,
    # label_smoothing, reduction, softcap, return_z_loss, accum_dtype, use_token_scaling,
    # return_token_accuracy, return_predicted_tokens, ce_impl, ce_mode, chunk_mem_const.
    out = LigerFusedLinearCrossEntropyFunction.apply(
        hidden.to(dtype), weight.to(dtype), labels, None, None, ignore_index, 0.0, 0.0, "mean", None, False,
        torch.float32, False, False, False, None, None, chunk_mem_const,
    )
    return out[0] if isinstance(out, tuple) else out


@torch.compiler.disable
def linear_cross_entropy_cce(hidden, weight, labels, ignore_index: int = IGNORE_INDEX):
    from cut_cross_entropy import linear_cross_entropy as cce

    dtype = _compute_dtype(hidden, weight)
    # filter_eps=None: no gradient filtering, so the gradient is exact (the default "high" drops
    # small softmax entries in the backward).
    return cce(hidden.to(dtype), weight.to(dtype), labels, ignore_index=ignore_index, filter_eps=None, impl="cce")


# Not traced: under torch.compile dynamo would trace the import machinery of liger-kernel (and the
# transformers modules it imports), running into its recompile limit on their classes.
@torch.compiler.disable
@functools.lru_cache(maxsize=None)
def import_problem(impl: str) -> str | None:
    """Why ``impl``'s package does not import (None if it does, or needs none)."""
    module = {"liger": "liger_kernel.ops.fused_linear_cross_entropy", "cce": "cut_cross_entropy"}.get(impl)
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except Exception as exc:  # a Triton or CUDA mismatch raises more than ImportError
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


# Under torch.compile the choice is taken once, at trace time (an import probe would break the graph).
@torch.compiler.assume_constant_result
def resolve_impl(impl: str, device_type: str) -> str:
    """The implementation ``impl`` means on ``device_type``: ``auto`` is ours in Triton on CUDA, else chunked."""
    if impl == "auto":
        return "triton" if device_type == "cuda" else "chunked"
    return impl


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, impl: str = "auto") -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels``. hidden: (N, d) (or (B, T, d),
    flattened); weight: (vocab, d); labels: N integers, ``ignore_index`` skipped. Differentiable in
    hidden and weight."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if hidden.shape[0] != labels.shape[0] or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and "
                         f"labels {tuple(labels.shape)} do not fit (N × d, vocab × d, N)")
    impl = resolve_impl(impl, hidden.device.type)
    if impl == "chunked":
        return linear_cross_entropy_chunked(hidden, weight, labels, ignore_index)
    if impl == "triton":
        if hidden.device.type != "cuda" and not _interpreting():
            raise ValueError("fused loss 'triton' needs a CUDA device (or TRITON_INTERPRET=1)")
        from flowhn.kernels.triton_cross_entropy import linear_cross_entropy_triton

        return linear_cross_entropy_triton(hidden, weight, labels, ignore_index, _compute_dtype(hidden, weight))
    if impl == "reference":
        return linear_cross_entropy_reference(hidden, weight, labels, ignore_index)
    if impl in ("liger", "cce"):
        problem = "it needs a CUDA device" if hidden.device.type != "cuda" else import_problem(impl)
        if problem is not None:
            raise ValueError(f"fused loss {impl!r} is not available: {problem}")
        fn = linear_cross_entropy_liger if impl == "liger" else linear_cross_entropy_cce
        return fn(hidden, weight, labels, ignore_index)
    raise ValueError(f"linear_cross_entropy: unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
