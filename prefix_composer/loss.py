"""Cross-entropy against sparse soft targets, at the cost of plain cross-entropy.

For logits ``z`` (one row per position) and a target ``q`` that is sparse plus an optional
uniform closed form (``targets.TargetTable``):

    loss_t = logsumexp(z_t) - Σ_k w_tk · z_t[id_tk] - c · Σ_{i<U} z_t[i]        (Σ q = 1)
    ∂loss_t/∂z_t = softmax(z_t) - q_t

averaged over the positions whose label is not ``ignore_index``. The plain NLL
``logsumexp(z_t) - z_t[y_t]`` of the gold token is returned beside it (no gradient) so a run
always logs a number comparable across objectives.

No [N, V] target is built. The forward does one pass over the logits (row chunks: logsumexp,
and the row sum when ``c > 0``) plus O(N·K) gathers; the backward turns the saved logits into
``softmax(z) - q`` in place, chunk by chunk in float32, so it allocates no [N, V] tensor either.
The caller must not reuse the logits after ``backward`` (the model never does).
"""

from __future__ import annotations

import torch

from prefix_composer.targets import SparseTargets

# Elements per row chunk: a chunk is upcast to float32, so this bounds the extra memory
# (32 MiB on CPU, where a cache-sized chunk is faster; 256 MiB on GPU).
_CHUNK_ELEMENTS = {'cpu': 1 << 23, 'cuda': 1 << 26}


def chunk_rows(logits: torch.Tensor) -> int:
    """Rows per chunk for a [N, V] tensor on its device."""
    budget = _CHUNK_ELEMENTS.get(logits.device.type, 1 << 26)
    return max(1, budget // max(1, logits.shape[-1]))


def accumulation_dtype(z: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 logits, float64 for float64 logits."""
    return torch.promote_types(z.dtype, torch.float32)


def rows_logsumexp_and_sum(z: torch.Tensor, uniform_count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``logsumexp`` of each row of ``z`` and, if ``uniform_count``, ``Σ_{i<U} z_i`` (accumulation dtype)."""
    zf = z.to(accumulation_dtype(z))
    lse = torch.logsumexp(zf, dim=-1)
    total = zf[:, :uniform_count].sum(dim=-1) if uniform_count else None
    return lse, total


def rows_soft_target_grad_(
    z: torch.Tensor,
    lse: torch.Tensor,
    targets: SparseTargets,
    scale: torch.Tensor,
) -> torch.Tensor:
    """``(softmax(z) - q) * scale[:, None]`` for a row chunk in the accumulation dtype (``z`` reused if it is that)."""
    g = z.to(accumulation_dtype(z))
    g.sub_(lse[:, None]).exp_()
    g.scatter_add_(1, targets.ids, -targets.weights.to(g.dtype))
    if targets.uniform_mass:
        g[:, :targets.uniform_count] -= targets.uniform_mass
    g.mul_(scale[:, None])
    return g


class _SoftTargetCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, labels, ids, weights, uniform_mass, uniform_count, ignore_index):
        valid = labels != ignore_index
        count = valid.sum().clamp_min(1)
        safe_labels = labels.masked_fill(~valid, 0)
        step = chunk_rows(logits)
        acc = accumulation_dtype(logits)
        lse = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        dot = (weights.to(acc) * logits.gather(1, ids).to(acc)).sum(-1)
        for start in range(0, logits.shape[0], step):
            rows = slice(start, start + step)
            lse[rows], total = rows_logsumexp_and_sum(logits[rows], uniform_count)
            if total is not None:
                dot[rows] += uniform_mass * total
        gold = logits.gather(1, safe_labels[:, None]).squeeze(1).to(acc)
        loss = ((lse - dot) * valid).sum() / count
        nll = ((lse - gold) * valid).sum() / count
        ctx.save_for_backward(logits, lse, ids, weights, valid, count)
        ctx.uniform = (uniform_mass, uniform_count)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        logits, lse, ids, weights, valid, count = ctx.saved_tensors
        scale = valid.to(lse.dtype) * (grad_loss / count)
        step = chunk_rows(logits)
        for start in range(0, logits.shape[0], step):
            rows = slice(start, start + step)
            chunk = SparseTargets(ids[rows], weights[rows], *ctx.uniform)
            g = rows_soft_target_grad_(logits[rows], lse[rows], chunk, scale[rows])
            if g.data_ptr() != logits[rows].data_ptr():
                logits[rows].copy_(g)
        return logits, None, None, None, None, None, None


def soft_target_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: SparseTargets,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean soft-target cross-entropy and mean plain NLL over non-ignored positions.

    Args:
        logits: [N, V] logits (any float dtype); overwritten by its gradient during backward.
        labels: [N] gold ids, ``ignore_index`` where the position does not count.
        targets: rows of the target table for ``labels`` (``TargetTable.lookup``), ids/weights [N, K].
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or targets.ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f'Expected logits [N, V], labels [N], targets [N, K]; got {tuple(logits.shape)}, '
            f'{tuple(labels.shape)}, {tuple(targets.ids.shape)}.',
        )
    return _SoftTargetCrossEntropy.apply(
        logits,
        labels,
        targets.ids,
        targets.weights,
        float(targets.uniform_mass),
        int(targets.uniform_count),
        ignore_index,
    )
