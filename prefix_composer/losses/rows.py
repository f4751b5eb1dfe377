"""Row operations shared by the two loss paths (``soft_target.py``, ``fused.py``).

A chunk of rows holds logits ``z`` [c, V]; the targets are sparse ``w`` on ``ids`` [c, K] plus a
uniform ``u`` on each id ``< U`` (``objectives.targets``). Every function here is one step of

    logp = log_softmax(z),   loss_t = -Σ_k w_tk·logp_t[id_tk] - u·Σ_{i<U} logp_t[i],
    ∂loss_t/∂z_t = softmax(z_t) - q_t

on a chunk, in the accumulation dtype (float32, or float64 for float64 inputs).
"""

from __future__ import annotations

import torch

from prefix_composer.objectives.targets import SparseTargets


def target_args(targets: SparseTargets) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """``SparseTargets`` as the positional arguments of an ``autograd.Function.apply``."""
    return targets.ids, targets.weights, float(targets.uniform_mass), int(targets.uniform_count)


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
