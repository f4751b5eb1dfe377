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
one more (``fused.py`` moves it to the O(N·d) side, where it is free).

The logits are consumed: after the forward they hold ``log_softmax(z)`` (float32 or float64
logits), after the backward their own gradient. The writes bump the tensor's version counter, so a
backward through any node that saved the logits raises autograd's in-place error instead of using
the overwritten values. (``ctx.mark_dirty`` cannot say it: the model passes a view of Hugging
Face's logits, and a Function that writes into a view may return only one tensor.) Nothing can
stop a plain read afterwards: ``PrefixLlamaForCausalLM.eval_forward`` never reuses training logits.
"""

from __future__ import annotations

import torch

from prefix_composer.losses import rows as row_ops
from prefix_composer.objectives.targets import SparseTargets

# Elements per row chunk (and per scratch buffer, 128/256 MiB in float32). Few large ops beat
# cache-sized chunks on CPU once the cores are shared: every op is an OpenMP barrier (the sweep
# is in docs/performance.md). GPU: few kernel launches.
_CHUNK_ELEMENTS = {'cpu': 1 << 25, 'cuda': 1 << 26}


def chunk_rows(n_cols: int, device: torch.device) -> int:
    """Rows per chunk of a [N, n_cols] tensor on ``device``."""
    budget = _CHUNK_ELEMENTS.get(device.type, 1 << 26)
    return max(1, budget // max(1, n_cols))


def scale_rows(g: torch.Tensor, scale: torch.Tensor, uniform_mass: float, uniform_count: int, out: torch.Tensor) -> torch.Tensor:
    """``out = scale·(g - uniform_mass·1[i < uniform_count])`` per row (``out`` may be ``g``).

    One pass without a uniform part, two with it (a scalar ``sub_``, then the row ``mul``): a
    three-operand ``addcmul`` with the per-row term broadcast was slower than ``mul`` on CPU.
    """
    if uniform_mass:
        g[:, :uniform_count].sub_(uniform_mass)
    return torch.mul(g, scale[:, None], out=out)


class _SoftTargetCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, labels, ids, weights, uniform_mass, uniform_count, ignore_index):
        targets = SparseTargets(ids, weights, uniform_mass, uniform_count)
        valid, count, gold = row_ops.valid_positions(labels, ignore_index)
        n, v = logits.shape
        step = chunk_rows(v, logits.device)
        acc = row_ops.accumulation_dtype(logits.dtype)
        scratch = None if logits.dtype == acc else row_ops.new_scratch(min(step, n), v, logits.dtype, logits.device)
        lse, objective, nll = (torch.empty(n, dtype=acc, device=logits.device) for _ in range(3))
        for start in range(0, n, step):
            rows = slice(start, start + step)
            z = logits[rows]
            logp, lse[rows] = row_ops.log_softmax_rows(z, gold[rows], z if scratch is None else scratch[: z.shape[0]])
            objective[rows], nll[rows] = row_ops.sparse_loss_terms(logp, row_ops.target_rows(targets, rows), gold[rows])
            if uniform_mass:
                objective[rows] -= uniform_mass * logp[:, :uniform_count].sum(dim=-1)
        ctx.save_for_backward(logits, lse, ids, weights, valid, count)
        ctx.uniform = (uniform_mass, uniform_count)
        ctx.mark_non_differentiable(nll)
        return row_ops.masked_mean(objective, valid, count), row_ops.masked_mean(nll, valid, count)

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        saved, lse, ids, weights, valid, count = ctx.saved_tensors  # saved: logp (float32/64) or logits
        targets = SparseTargets(ids, weights, *ctx.uniform)
        scale = valid.to(lse.dtype) * (grad_loss / count)
        n, v = saved.shape
        step = chunk_rows(v, saved.device)
        scratch = None if saved.dtype == lse.dtype else row_ops.new_scratch(min(step, n), v, saved.dtype, saved.device)
        for start in range(0, n, step):
            rows = slice(start, start + step)
            out = saved[rows]
            logp = out if scratch is None else torch.sub(out, lse[rows, None], out=scratch[: out.shape[0]])
            g = row_ops.softmax_minus_sparse_(logp, row_ops.target_rows(targets, rows))
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
    row_ops.check_loss_inputs(logits.shape, labels, targets)
    return _SoftTargetCrossEntropy.apply(logits, labels, *row_ops.target_args(targets), ignore_index)
