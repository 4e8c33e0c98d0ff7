"""The LM head and cross-entropy, fused, with no host sync: a ``torch.library`` custom op, so that a
compiled model keeps it inside its graph (and its CUDA graph) instead of breaking around it.

Semantics: ``flowhn.kernels.cross_entropy.linear_cross_entropy_reference`` (mean over the labels that are
not ``ignore_index``; nan when none is). The scheme is ``cross_entropy``'s chunked one, and liger-kernel's:
tokens in chunks; per chunk the logits (one GEMM, in the compute dtype), then one Triton program a row
that reads the row twice, once for its log-sum-exp and loss and once to overwrite the logits with their
gradient, (softmax − one-hot) / valid tokens; two more GEMMs turn that into the chunk's gradients of
hidden and weight, which are all the backward keeps. Only one chunk of logits ever exists.

Why not liger-kernel's function (the default before this one): it reads the number of valid labels
with ``.item()`` in its forward and compares the incoming gradient with 1.0 by ``torch.equal`` in its
backward, two host syncs a step, and ``torch.compile`` has to leave it out of its graph. Here the count
stays on the GPU: the kernel reads 1 / valid tokens from device memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from flowhn.kernels import triton_interpreter  # noqa: F401  (patches the CPU interpreter where it runs)
from flowhn.kernels.cross_entropy import chunk_tokens_for

# Logit elements a chunk holds (in the compute dtype): 2**26 is 128 MiB in bf16, 12 chunks at 135M's
# 16,384 tokens × 49,152 words. (2**27 ran 135M llama at the same speed with 0.28 GiB more peak than
# liger-kernel's chunks, eighth session.)
CHUNK_ELEMENTS = 2**26
# addmm with an fp32 output from bf16 inputs, accumulating in place (torch >= 2.9 has the overload):
# no (vocab × d) fp32 temporary per chunk.
_ADDMM_OUT_DTYPE = "dtype_out" in torch.ops.aten.addmm.overloads()
BLOCK_V = 4096
NUM_WARPS = 8


@triton.jit
def _cross_entropy_rows_kernel(logits_ptr, stride_row, labels_ptr, loss_ptr, inv_valid_ptr, V, ignore_index,
                               BLOCK_V: tl.constexpr, WITH_GRAD: tl.constexpr):
    """Row r: loss_r = lse − logit[label] (0 if ignored); with WITH_GRAD, the row is overwritten with
    (softmax − one-hot) · (1 / valid tokens) (0 if ignored), in the logits' dtype. fp32 arithmetic."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    safe_label = tl.where(valid, label, 0)
    # Online log-sum-exp over the row's blocks.
    running_max = tl.full((), float("-inf"), tl.float32)
    running_sum = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    target = tl.load(row_ptr + safe_label).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))
    if WITH_GRAD:
        scale = tl.where(valid, tl.load(inv_valid_ptr), 0.0)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            mask = offs < V
            x = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) - tl.where(offs == safe_label, 1.0, 0.0)
            tl.store(row_ptr + offs, (grad * scale).to(logits_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("flowhn::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, compute_dtype: torch.dtype,
    with_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss fp32, d loss / d hidden in hidden's dtype, d loss / d weight in weight's dtype); the
    gradients are empty (0 elements) without ``with_grads``."""
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    labels = labels.contiguous()  # the kernel reads a row's label at labels_ptr + row
    valid_count = (labels != ignore_index).sum()
    inv_valid = 1.0 / valid_count.clamp(min=1).to(torch.float32)
    w = weight.to(compute_dtype)
    losses = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty((n_tokens, hidden.shape[1]) if with_grads else (0,), dtype=hidden.dtype,
                              device=hidden.device)
    # The weight's gradient accumulates in fp32 across chunks (fp32 GEMM outputs on CUDA).
    grad_weight = torch.zeros(weight.shape if with_grads else (0,), dtype=torch.float32, device=weight.device)
    fp32_out = weight.device.type == "cuda" and compute_dtype in (torch.bfloat16, torch.float16)
    step = chunk_tokens_for(n_tokens, vocab, CHUNK_ELEMENTS)
    with torch.autocast(hidden.device.type, enabled=False):  # the GEMMs run in compute_dtype, as cast here
        for start in range(0, n_tokens, step):
            stop = min(start + step, n_tokens)
            h = hidden[start:stop].to(compute_dtype)
            logits = h @ w.T
            _cross_entropy_rows_kernel[(stop - start,)](
                logits, logits.stride(0), labels[start:stop], losses[start:stop], inv_valid, vocab, ignore_index,
                BLOCK_V=BLOCK_V, WITH_GRAD=with_grads, num_warps=NUM_WARPS)
            if with_grads:  # logits now hold d loss / d logits
                grad_hidden[start:stop] = logits @ w
                if fp32_out and _ADDMM_OUT_DTYPE:
                    torch.addmm(grad_weight, logits.T, h, out_dtype=torch.float32, out=grad_weight)
                elif fp32_out:
                    grad_weight += torch.mm(logits.T, h, out_dtype=torch.float32)
                else:
                    grad_weight += (logits.T @ h).float()
    # 0/0 = nan when no label is valid, as F.cross_entropy gives.
    loss = losses.sum() / valid_count
    return loss, grad_hidden, grad_weight.to(weight.dtype)


@_linear_cross_entropy.register_fake
def _(hidden, weight, labels, ignore_index, compute_dtype, with_grads):
    return (hidden.new_empty((), dtype=torch.float32),
            hidden.new_empty(tuple(hidden.shape) if with_grads else (0,)),
            weight.new_empty(tuple(weight.shape) if with_grads else (0,)))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, grad_loss, _grad_of_grad_hidden, _grad_of_grad_weight):
    grad_hidden, grad_weight = ctx.saved_tensors
    # The incoming gradient is a 0-d tensor: multiplied on the GPU, never read back.
    return (grad_hidden * grad_loss.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None,
            grad_weight * grad_loss.to(grad_weight.dtype) if ctx.needs_input_grad[1] else None,
            None, None, None, None)


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy_triton(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                ignore_index: int, compute_dtype: torch.dtype) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (N × d, vocab × d) against N labels; CUDA (or Triton's
    CPU interpreter)."""
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _linear_cross_entropy(hidden, weight, labels, ignore_index, compute_dtype, with_grads)[0]
