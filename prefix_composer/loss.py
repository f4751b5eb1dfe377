"""Cross-entropy against sparse soft targets, at the cost of plain cross-entropy.

For logits ``z`` (one row per position) and a target ``q`` that is sparse plus an optional
uniform closed form (``targets.TargetTable``):

    loss_t = logsumexp(z_t) - Σ_k w_tk · z_t[id_tk] - c · Σ_{i<U} z_t[i]        (Σ q = 1)
    ∂loss_t/∂z_t = softmax(z_t) - q_t

averaged over the positions whose label is not ``ignore_index``. The plain NLL
``logsumexp(z_t) - z_t[y_t]`` of the gold token is returned beside it (no gradient) so a run
always logs a number comparable across objectives.

No [N, V] tensor is allocated. Rows are processed in chunks: the forward takes the row max and a
``log_softmax`` into a reused scratch buffer (plus, for label smoothing, its uniform row sum) and
O(N·K) gathers; the backward turns the saved logits into ``(softmax(z) - q) · scale`` in place,
chunk by chunk, with two dense passes (subtract, exp), in float32 (float64 for float64 logits). The caller must not reuse the logits after ``backward``;
autograd raises if a node saved them for its own backward (their version counter changes).
"""

from __future__ import annotations

import torch

from prefix_composer.targets import SparseTargets

# Elements per row chunk (and per scratch buffer, 128/256 MiB in float32). Few large ops beat
# cache-sized chunks on CPU once the cores are shared: every op is an OpenMP barrier (measured
# 2^20..2^25 on the 2-core dev box, docs/performance.md). GPU: few kernel launches.
_CHUNK_ELEMENTS = {'cpu': 1 << 25, 'cuda': 1 << 26}


def chunk_rows(n_cols: int, device: torch.device) -> int:
    """Rows per chunk of a [N, n_cols] tensor on ``device``."""
    budget = _CHUNK_ELEMENTS.get(device.type, 1 << 26)
    return max(1, budget // max(1, n_cols))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 logits, float64 for float64 logits."""
    return torch.promote_types(dtype, torch.float32)


def target_rows(targets: SparseTargets, rows: slice) -> SparseTargets:
    """The targets of a slice of positions."""
    return SparseTargets(targets.ids[rows], targets.weights[rows], targets.uniform_mass, targets.uniform_count)


def rows_loss_terms(
    z: torch.Tensor,
    targets: SparseTargets,
    gold: torch.Tensor,
    scratch: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: ``logsumexp(z_t)``, the objective ``-Σ_i q_t[i]·log_softmax(z_t)[i]`` and the NLL
    ``-log_softmax(z_t)[gold_t]``, in the accumulation dtype (that of ``scratch``).

    ``scratch`` is a buffer of at least ``z.shape[0]`` rows of width V (overwritten). Two passes
    over ``z`` (max, log_softmax); ``lse = max - log_softmax[argmax]`` is exact to rounding
    because ``|log_softmax[argmax]| <= log V``.
    """
    top, arg = z.max(dim=-1, keepdim=True)
    logp = torch.log_softmax(z, dim=-1, dtype=scratch.dtype, out=scratch[: z.shape[0]])
    lse = top.squeeze(1).to(logp.dtype) - logp.gather(1, arg).squeeze(1)
    objective = -(targets.weights.to(logp.dtype) * logp.gather(1, targets.ids)).sum(dim=-1)
    if targets.uniform_mass:
        objective -= targets.uniform_mass * logp[:, : targets.uniform_count].sum(dim=-1)
    return lse, objective, -logp.gather(1, gold[:, None]).squeeze(1)


def rows_soft_target_grad_(
    z: torch.Tensor,
    lse: torch.Tensor,
    targets: SparseTargets,
    scale: torch.Tensor,
    negate: bool = False,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """``±(softmax(z) - q) · scale[:, None]`` for a row chunk (``scale >= 0``; minus if ``negate``),
    in the accumulation dtype: written into ``z`` itself when it has that dtype, else into ``scratch``.

    The scale is folded into the exponent, ``exp(z - lse + log scale)``, so the dense work is two
    passes (subtract, exp); rows with scale 0 come out as exact zeros.
    """
    acc = accumulation_dtype(z.dtype)
    g = z if z.dtype == acc else scratch[: z.shape[0]]
    torch.sub(z, (lse - scale.log())[:, None], out=g)
    g.exp_()
    g.scatter_add_(1, targets.ids, -targets.weights.to(acc) * scale[:, None])
    if targets.uniform_mass:
        g[:, : targets.uniform_count] -= (targets.uniform_mass * scale)[:, None]
    return g.neg_() if negate else g


def new_scratch(rows: int, n_cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable [rows, n_cols] buffer in the accumulation dtype of ``dtype``."""
    return torch.empty(rows, n_cols, dtype=accumulation_dtype(dtype), device=device)


def masked_mean(values: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``Σ_t values_t`` over the valid rows, divided by their ``count``."""
    return torch.where(valid, values, 0.0).sum() / count


class _SoftTargetCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, labels, ids, weights, uniform_mass, uniform_count, ignore_index):
        targets = SparseTargets(ids, weights, uniform_mass, uniform_count)
        valid = labels != ignore_index
        count = valid.sum().clamp_min(1)
        gold = labels.masked_fill(~valid, 0)
        n, v = logits.shape
        step = chunk_rows(v, logits.device)
        scratch = new_scratch(min(step, n), v, logits.dtype, logits.device)
        acc = scratch.dtype
        lse, objective, nll = (torch.empty(n, dtype=acc, device=logits.device) for _ in range(3))
        for start in range(0, n, step):
            rows = slice(start, start + step)
            lse[rows], objective[rows], nll[rows] = rows_loss_terms(
                logits[rows], target_rows(targets, rows), gold[rows], scratch,
            )
        loss, nll = masked_mean(objective, valid, count), masked_mean(nll, valid, count)
        ctx.save_for_backward(logits, lse, ids, weights, valid, count)
        ctx.uniform = (uniform_mass, uniform_count)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        logits, lse, ids, weights, valid, count = ctx.saved_tensors
        targets = SparseTargets(ids, weights, *ctx.uniform)
        scale = valid.to(lse.dtype) * (grad_loss.abs() / count)
        negate = bool(grad_loss < 0)  # one host sync per backward; the dense passes stay at two
        n, v = logits.shape
        step = chunk_rows(v, logits.device)
        scratch = None if logits.dtype == lse.dtype else new_scratch(min(step, n), v, logits.dtype, logits.device)
        for start in range(0, n, step):
            rows = slice(start, start + step)
            g = rows_soft_target_grad_(
                logits[rows], lse[rows], target_rows(targets, rows), scale[rows], negate, scratch,
            )
            if g.data_ptr() != logits[rows].data_ptr():
                logits[rows].copy_(g)
        # A fresh alias, so that a leaf's AccumulateGrad adopts this storage instead of cloning it.
        return logits.detach(), None, None, None, None, None, None


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
    check_loss_inputs(logits.shape, labels, targets)
    return _SoftTargetCrossEntropy.apply(
        logits,
        labels,
        targets.ids,
        targets.weights,
        float(targets.uniform_mass),
        int(targets.uniform_count),
        ignore_index,
    )


def check_loss_inputs(logits_shape: torch.Size, labels: torch.Tensor, targets: SparseTargets) -> None:
    """Raise ``ValueError`` unless the shapes are logits [N, V], labels [N], targets [N, K] with ids < V."""
    n_ok = len(logits_shape) == 2 and labels.shape == logits_shape[:1]
    if not n_ok or targets.ids.shape[0] != labels.shape[0] or targets.ids.shape != targets.weights.shape:
        raise ValueError(
            f'Expected logits [N, V], labels [N], targets ids/weights [N, K]; got {tuple(logits_shape)}, '
            f'{tuple(labels.shape)}, {tuple(targets.ids.shape)}/{tuple(targets.weights.shape)}.',
        )
    if targets.uniform_count > logits_shape[1]:
        raise ValueError(f'uniform_count {targets.uniform_count} exceeds the {logits_shape[1]} logit columns.')
