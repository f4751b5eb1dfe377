"""LM head + soft-target cross-entropy fused and chunked over tokens: no [N, V] logits.

For final hidden states ``h`` [N, d], head weight ``W`` [V, d] and the targets of ``soft_target.py``
(sparse ``w`` on ``ids`` plus ``u`` on each id ``< U``), per chunk ``c`` of tokens:

    z_c = h_c W^T, logp_c = log_softmax(z_c)                   (one reused [c, V] buffer)
    G_c = softmax(z_c) - q_sparse                              (in place: exp, scatter)
    ∂L/∂h_c = s_c ⊙ (G_c W) - u·s_c ⊗ Σ_{i<U} W_i,   ∂L/∂W += G_c^T (s_c ⊙ h_c)

with ``s_t = valid_t / n_valid``; after the last chunk ``∂L/∂W[:U] -= u·Σ_t s_t h_t``. The row
scale and label smoothing's uniform part act on the O(N·d) side, and the uniform loss term uses
``Σ_{i<U} logp_t[i] = h_t·Σ_{i<U} W_i - U·lse_t``: every objective costs the same dense work, one
``log_softmax`` and one ``exp`` pass per logit, fewer than the unfused head plus ``soft_target.py``.
Peak memory is one [c, V] chunk (plus its float32 copy under
half-precision matmuls) and the [V, d] weight gradient, instead of the [N, V] logits and their
gradient. The gradients are computed in the forward, as Liger-Kernel's fused linear
cross-entropy does: three matmuls per chunk, as many as an unfused head, where recomputing them in
the backward would take four. The backward only scales the two stored gradients by the incoming
``∂/∂loss`` (in place, so the graph can be backpropagated once; a second backward raises).

Under autocast (bf16 on GPU) the matmuls run in the autocast dtype like the unfused head; the
softmax/target math runs in float32 and the weight gradient accumulates in float32.
"""

from __future__ import annotations

import torch

from prefix_composer.losses import rows as row_ops
from prefix_composer.objectives.targets import SparseTargets

# Logit elements per chunk: one [chunk, V] buffer in the matmul dtype (plus a float32 one for half
# precision). Chosen by `scripts/bench_loss.py --fused-chunks` (docs/performance.md).
_CHUNK_ELEMENTS = 1 << 27


def fused_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk for a head of ``vocab_size`` rows."""
    return max(1, _CHUNK_ELEMENTS // max(1, vocab_size))


def matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for the device, else the promoted input dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def accumulate_weight_grad(
    grad_weight: torch.Tensor | None, g: torch.Tensor, h_scaled: torch.Tensor, weight_dtype: torch.dtype,
) -> torch.Tensor:
    """``grad_weight + g^T h_scaled`` in the weight's accumulation dtype; the first chunk
    (``grad_weight is None``) writes it, so the [V, d] buffer is never zero-filled."""
    if grad_weight is None:
        return (g.t() @ h_scaled).to(row_ops.accumulation_dtype(weight_dtype))
    if grad_weight.dtype == g.dtype:
        return grad_weight.addmm_(g.t(), h_scaled)
    return grad_weight.add_(g.t() @ h_scaled)


class _FusedLinearSoftTargetCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, labels, ids, weights, uniform_mass, uniform_count, ignore_index, chunk_tokens):
        targets = SparseTargets(ids, weights, uniform_mass, uniform_count)
        mm_dtype = matmul_dtype(hidden, weight)
        acc = row_ops.accumulation_dtype(mm_dtype)
        n, v = hidden.shape[0], weight.shape[0]
        step = max(1, min(n, chunk_tokens or fused_chunk_tokens(v)))
        valid, count, gold = row_ops.valid_positions(labels, ignore_index)
        scale = valid.to(acc) / count
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(mm_dtype), weight.to(mm_dtype)
            logits = torch.empty(step, v, dtype=mm_dtype, device=hidden.device)
            scratch = None if mm_dtype == acc else row_ops.new_scratch(step, v, mm_dtype, hidden.device)
            if uniform_mass:
                w_sum = weight[:uniform_count].sum(dim=0, dtype=acc)  # Σ_{i<U} W_i
            objective, nll = (torch.empty(n, dtype=acc, device=hidden.device) for _ in range(2))
            grad_hidden = torch.empty_like(hidden)
            grad_weight = None
            for start in range(0, n, step):
                rows = slice(start, start + step)
                h_c = h[rows]
                z = torch.mm(h_c, w.t(), out=logits[: h_c.shape[0]])
                chunk = row_ops.target_rows(targets, rows)
                logp, lse = row_ops.log_softmax_rows(z, gold[rows], z if scratch is None else scratch[: z.shape[0]])
                objective[rows], nll[rows] = row_ops.sparse_loss_terms(logp, chunk, gold[rows])
                g = row_ops.softmax_minus_sparse_(logp, chunk)
                if g.data_ptr() != z.data_ptr():
                    g = z.copy_(g)
                grad_hidden[rows] = torch.mm(g, w) * scale[rows, None]
                if uniform_mass:
                    objective[rows] -= uniform_mass * (h_c.to(acc) @ w_sum - uniform_count * lse)
                    grad_hidden[rows] -= torch.outer(uniform_mass * scale[rows], w_sum)
                grad_weight = accumulate_weight_grad(grad_weight, g, (hidden[rows] * scale[rows, None]).to(mm_dtype), weight.dtype)
            if uniform_mass:
                grad_weight[:uniform_count] -= uniform_mass * (scale @ hidden.to(acc))  # u·Σ_t s_t h_t
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.backpropagated = False
        ctx.mark_non_differentiable(nll)
        return row_ops.masked_mean(objective, valid, count), row_ops.masked_mean(nll, valid, count)

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
        chunk_tokens: tokens per chunk; default ``fused_chunk_tokens(V)``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f'Expected hidden [N, d] and weight [V, d]; got {tuple(hidden.shape)} and {tuple(weight.shape)}.')
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f'chunk_tokens must be a positive integer, got {chunk_tokens!r}.')
    row_ops.check_loss_inputs(torch.Size((hidden.shape[0], weight.shape[0])), labels, targets)
    return _FusedLinearSoftTargetCrossEntropy.apply(
        hidden, weight, labels, *row_ops.target_args(targets), ignore_index, chunk_tokens,
    )
