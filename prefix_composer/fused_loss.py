"""LM head + soft-target cross-entropy fused and chunked over tokens: no [N, V] logits.

For final hidden states ``h`` [N, d], head weight ``W`` [V, d] and the sparse targets of
``loss.py``, per chunk ``c`` of tokens:

    z_c = h_c W^T                          (a reused [c, V] buffer)
    loss_t, nll_t, lse_t                   (loss.rows_loss_terms, the same math as the logits path)
    G_c = (softmax(z_c) - q_c) · valid/n   (loss.rows_soft_target_grad_, in place)
    ∂L/∂h_c = G_c W,   ∂L/∂W += G_c^T h_c

so peak memory is O(c·V) plus the [V, d] weight gradient instead of the [N, V] logits and
their gradient. The gradients are computed in the forward, as Liger-Kernel's fused linear
cross-entropy does, rather than recomputed in the backward: that costs three matmuls per chunk,
the same as an unfused head (forward, and two in its backward), where recomputation would cost
four. The backward only scales the two stored gradients by the incoming ``∂/∂loss`` (in place,
so the graph can be backpropagated once; a second backward raises).

Under autocast (bf16 on GPU) the matmuls run in the autocast dtype like the unfused head; the
softmax/target math runs in float32 and the weight gradient accumulates in float32.
"""

from __future__ import annotations

import torch

from prefix_composer.loss import (
    accumulation_dtype,
    check_loss_inputs,
    masked_mean,
    new_scratch,
    rows_loss_terms,
    rows_soft_target_grad_,
    target_rows,
)
from prefix_composer.targets import SparseTargets

# Logit elements per chunk: two [chunk, V] buffers (matmul dtype + float32 scratch) are alive.
_CHUNK_ELEMENTS = {'cpu': 1 << 25, 'cuda': 1 << 27}


def fused_chunk_tokens(vocab_size: int, device: torch.device) -> int:
    """Tokens per chunk for a head of ``vocab_size`` rows on ``device``."""
    return max(1, _CHUNK_ELEMENTS.get(device.type, 1 << 27) // max(1, vocab_size))


def matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for the device, else the promoted input dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _FusedLinearSoftTargetCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, labels, ids, weights, uniform_mass, uniform_count, ignore_index, chunk_tokens):
        targets = SparseTargets(ids, weights, uniform_mass, uniform_count)
        mm_dtype = matmul_dtype(hidden, weight)
        n, v = hidden.shape[0], weight.shape[0]
        step = max(1, min(n, chunk_tokens or fused_chunk_tokens(v, hidden.device)))
        valid = labels != ignore_index
        count = valid.sum().clamp_min(1)
        gold = labels.masked_fill(~valid, 0)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(mm_dtype), weight.to(mm_dtype)
            logits = torch.empty(step, v, dtype=mm_dtype, device=hidden.device)
            scratch = new_scratch(step, v, mm_dtype, hidden.device)
            acc = scratch.dtype
            scale = valid.to(acc) / count
            objective, nll = (torch.empty(n, dtype=acc, device=hidden.device) for _ in range(2))
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros(v, weight.shape[1], dtype=accumulation_dtype(weight.dtype), device=weight.device)
            for start in range(0, n, step):
                rows = slice(start, start + step)
                h_c = h[rows]
                z = torch.mm(h_c, w.t(), out=logits[: h_c.shape[0]])
                chunk = target_rows(targets, rows)
                lse, objective[rows], nll[rows] = rows_loss_terms(z, chunk, gold[rows], scratch)
                g = rows_soft_target_grad_(z, lse, chunk, scale[rows], scratch=scratch)
                if g.data_ptr() != z.data_ptr():
                    g = z.copy_(g)
                grad_hidden[rows] = g @ w
                if grad_weight.dtype == mm_dtype:
                    grad_weight.addmm_(g.t(), h_c)
                else:
                    grad_weight += g.t() @ h_c
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.backpropagated = False
        ctx.mark_non_differentiable(nll)
        return masked_mean(objective, valid, count), masked_mean(nll, valid, count)

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        if ctx.backpropagated:
            raise RuntimeError('The fused head+loss graph can be backpropagated only once (its gradients are scaled in place).')
        ctx.backpropagated = True
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        grad_weight.mul_(grad_loss.to(grad_weight.dtype))
        return grad_hidden, grad_weight.to(ctx.weight_dtype), None, None, None, None, None, None, None


def fused_linear_soft_target_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    targets: SparseTargets,
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean soft-target cross-entropy and mean plain NLL of the logits ``hidden @ weight.T``.

    Same values and gradients (w.r.t. ``hidden`` and ``weight``) as
    ``soft_target_cross_entropy(hidden @ weight.T, labels, targets, ignore_index)``.

    Args:
        hidden: [N, d] final hidden states (after the final norm).
        weight: [V, d] LM-head (possibly tied embedding) weight.
        labels: [N] gold ids, ``ignore_index`` where the position does not count.
        targets: rows of the target table for ``labels``, ids/weights [N, K].
        chunk_tokens: tokens per chunk; default ``fused_chunk_tokens(V, device)``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f'Expected hidden [N, d] and weight [V, d]; got {tuple(hidden.shape)} and {tuple(weight.shape)}.')
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f'chunk_tokens must be a positive integer, got {chunk_tokens!r}.')
    check_loss_inputs(torch.Size((hidden.shape[0], weight.shape[0])), labels, targets)
    return _FusedLinearSoftTargetCrossEntropy.apply(
        hidden,
        weight,
        labels,
        targets.ids,
        targets.weights,
        float(targets.uniform_mass),
        int(targets.uniform_count),
        ignore_index,
        chunk_tokens,
    )
