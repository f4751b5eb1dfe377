"""Per-gold-id statistics of a target table, in float64: what an objective actually asks for.

For gold id ``y`` with target ``q`` (``objectives.targets``: sparse ``weights`` on ``ids`` plus
``uniform_mass`` ``u`` on each id ``< uniform_count`` ``U``):

    off_gold(y) = 1 - q_y = Σ_{k: ids_k != y} w_k + u·(U - 1[y < U])
    entropy(y)  = -Σ_i q_i·log q_i      (natural log; 0·log 0 = 0)

The off-gold ids of a row are distinct (prefixes of different lengths), so each sparse entry is
one id with ``q = w + u·1[id < U]``; the ``U`` minus those (and the gold id) ids get ``u`` each.
Near 0 off-gold mass means the objective is plain cross-entropy on those tokens.
"""

from __future__ import annotations

import torch

from prefix_composer.objectives.targets import TargetTable

# Mean off-gold mass below which an objective is plain cross-entropy (``PrefixSmoothing``'s warning).
PLAIN_CE_OFF_GOLD = 1e-4


def _xlogx(q: torch.Tensor) -> torch.Tensor:
    """q·log q, with q clamped at 0 (label smoothing at eps=1 stores the gold weight 1-eps-u, which
    float32 rounding can leave a hair below -u)."""
    q = q.clamp_min(0.0)
    return torch.special.xlogy(q, q)


def per_id_stats(table: TargetTable) -> tuple[torch.Tensor, torch.Tensor]:
    """``(off_gold, entropy)``, float64 tensors of shape [rows of the table] (see module docstring)."""
    ids, w = table.ids.cpu(), table.weights.cpu().double()
    gold = torch.arange(ids.shape[0])[:, None]
    u, n_uniform = float(table.uniform_mass), int(table.uniform_count)
    is_gold = ids == gold
    gold_below = (gold[:, 0] < n_uniform).double()
    off_sparse = torch.where(is_gold, 0.0, w)
    off_gold = off_sparse.sum(dim=1) + u * (n_uniform - gold_below)
    q_gold = torch.where(is_gold, w, 0.0).sum(dim=1) + u * gold_below
    q_off = off_sparse + u * (ids < n_uniform).double()
    n_off_below = (~is_gold & (ids < n_uniform)).sum(dim=1).double()
    rest = n_uniform - gold_below - n_off_below  # uniform ids outside the row's sparse support
    entropy = -_xlogx(q_gold) - torch.where(is_gold, 0.0, _xlogx(q_off)).sum(dim=1) - rest * float(_xlogx(torch.tensor(u, dtype=torch.float64)))
    return off_gold, entropy

