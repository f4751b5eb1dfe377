"""Cross-entropy against sparse soft targets, at the cost of plain cross-entropy.

Each target row (``targets.TargetTable``) is sparse plus an optional uniform part:

    q_t      = Σ_k w_tk·one_hot(id_tk) + u·1[i < U]                        (Σ_i q_t[i] = 1)
    loss_t   = -Σ_i q_t[i]·logp_t[i] = -Σ_k w_tk·logp_t[id_tk] - u·Σ_{i<U} logp_t[i]
    ∂L/∂z_t  = s_t·(softmax(z_t) - q_t),    s_t = ∂L/∂L_mean · valid_t / n_valid

with ``logp_t = log_softmax(z_t)`` and ``L`` the mean of ``loss_t`` over the ``n_valid``
positions whose label is not ``ignore_index``. The plain NLL ``-logp_t[y_t]`` of the gold token
is returned beside it (no gradient), so a run always logs a number comparable across objectives.

Cost, in dense passes over the logits, row chunk by row chunk (no [N, V] tensor is allocated):
the forward is one ``log_softmax`` written over the logits themselves (half-precision logits: into
a float32 scratch chunk), plus, for label smoothing only, one read for ``Σ_{i<U} logp``; the rest
is O(N·K) gathers. The backward is ``exp`` and the row scale ``s``, in place, with the sparse
``-w`` scattered in between: two passes, as in plain cross-entropy; label smoothing's ``-u`` is
one more (``fused_loss.py`` moves it to the O(N·d) side, where it is free). The logits are
consumed: after the forward they hold ``log_softmax(z)`` (float32 or float64 logits), after the
backward their own gradient. Autograd raises if another node saved them.
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


def log_softmax_rows(z: torch.Tensor, gold: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``out = log_softmax(z)`` (``out`` may be ``z`` itself) and per row ``lse = z[gold] - out[gold]``.

    ``lse`` comes from one column instead of a max pass; its rounding error is that of
    ``logp[gold]``, the same as the entries of a plain ``log_softmax``.
    """
    z_gold = z.gather(1, gold[:, None]).to(out.dtype)
    torch.log_softmax(z, dim=-1, dtype=out.dtype, out=out)
    return out, (z_gold - out.gather(1, gold[:, None])).squeeze(1)


def sparse_loss_terms(logp: torch.Tensor, targets: SparseTargets, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sparse part of the objective ``-Σ_k w_k·logp[id_k]`` and the NLL ``-logp[gold]``."""
    sparse = -(targets.weights.to(logp.dtype) * logp.gather(1, targets.ids)).sum(dim=-1)
    return sparse, -logp.gather(1, gold[:, None]).squeeze(1)


def softmax_minus_sparse_(logp: torch.Tensor, targets: SparseTargets) -> torch.Tensor:
    """In place: ``exp(logp) - Σ_k w_k·one_hot(id_k)``, i.e. ``softmax - q`` without the uniform part."""
    return logp.exp_().scatter_add_(1, targets.ids, -targets.weights.to(logp.dtype))


def scale_rows(g: torch.Tensor, scale: torch.Tensor, uniform_mass: float, uniform_count: int, out: torch.Tensor) -> torch.Tensor:
    """``out = scale·(g - uniform_mass·1[i < uniform_count])`` per row (``out`` may be ``g``).

    One pass without a uniform part, two with it (a scalar ``sub_``, then the row ``mul``): a
    three-operand ``addcmul`` with the per-row term broadcast measured 3x slower than ``mul`` on CPU.
    """
    if uniform_mass:
        g[:, :uniform_count].sub_(uniform_mass)
    return torch.mul(g, scale[:, None], out=out)


def new_scratch(rows: int, n_cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable [rows, n_cols] buffer in the accumulation dtype of ``dtype``."""
    return torch.empty(rows, n_cols, dtype=accumulation_dtype(dtype), device=device)


def masked_mean(values: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``Σ_t values_t`` over the valid rows, divided by their ``count``."""
    return torch.where(valid, values, 0.0).sum() / count


def valid_positions(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``valid`` mask, their ``count`` (at least 1) and the labels with ignored positions set to id 0."""
    valid = labels != ignore_index
    return valid, valid.sum().clamp_min(1), labels.masked_fill(~valid, 0)


class _SoftTargetCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, labels, ids, weights, uniform_mass, uniform_count, ignore_index):
        targets = SparseTargets(ids, weights, uniform_mass, uniform_count)
        valid, count, gold = valid_positions(labels, ignore_index)
        n, v = logits.shape
        step = chunk_rows(v, logits.device)
        acc = accumulation_dtype(logits.dtype)
        scratch = None if logits.dtype == acc else new_scratch(min(step, n), v, logits.dtype, logits.device)
        lse, objective, nll = (torch.empty(n, dtype=acc, device=logits.device) for _ in range(3))
        for start in range(0, n, step):
            rows = slice(start, start + step)
            z = logits[rows]
            logp, lse[rows] = log_softmax_rows(z, gold[rows], z if scratch is None else scratch[: z.shape[0]])
            objective[rows], nll[rows] = sparse_loss_terms(logp, target_rows(targets, rows), gold[rows])
            if uniform_mass:
                objective[rows] -= uniform_mass * logp[:, :uniform_count].sum(dim=-1)
        ctx.save_for_backward(logits, lse, ids, weights, valid, count)
        ctx.uniform = (uniform_mass, uniform_count)
        ctx.mark_non_differentiable(nll)
        return masked_mean(objective, valid, count), masked_mean(nll, valid, count)

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        saved, lse, ids, weights, valid, count = ctx.saved_tensors  # saved: logp (float32/64) or logits
        targets = SparseTargets(ids, weights, *ctx.uniform)
        scale = valid.to(lse.dtype) * (grad_loss / count)
        n, v = saved.shape
        step = chunk_rows(v, saved.device)
        scratch = None if saved.dtype == lse.dtype else new_scratch(min(step, n), v, saved.dtype, saved.device)
        for start in range(0, n, step):
            rows = slice(start, start + step)
            out = saved[rows]
            logp = out if scratch is None else torch.sub(out, lse[rows, None], out=scratch[: out.shape[0]])
            g = softmax_minus_sparse_(logp, target_rows(targets, rows))
            scale_rows(g, scale[rows], *ctx.uniform, out=out)
        # A fresh alias, so that a leaf's AccumulateGrad adopts this storage instead of cloning it.
        return saved.detach(), None, None, None, None, None, None


def soft_target_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    targets: SparseTargets,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean soft-target cross-entropy and mean plain NLL over non-ignored positions.

    Args:
        logits: [N, V] logits (any float dtype); consumed: overwritten by ``log_softmax`` in the
            forward (float32/float64) and by their gradient in the backward.
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
