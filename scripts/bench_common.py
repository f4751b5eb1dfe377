"""Shared by the loss benchmarks (``bench_loss.py``, ``gpu_check.py``): the objectives' benchmark
settings, realistic random inputs, the float64 dense reference and the two loss paths run once.

torch and the project's objectives/losses only (no Composer), so that it runs on the GPU machine.
"""

from __future__ import annotations

import contextlib
import resource

import torch

from prefix_composer.constants import IGNORE_INDEX
from prefix_composer.losses.fused import fused_linear_soft_target_cross_entropy
from prefix_composer.losses.soft_target import soft_target_cross_entropy
from prefix_composer.objectives.targets import ObjectiveSpec, SparseTargets

IGNORE = IGNORE_INDEX
EPS = {'ce': 0.0, 'label_smoothing': 0.1}  # prefix objectives: eps 1.0 (the production variant)
PATHS = ('logits', 'fused')


def benchmark_spec(objective: str, support: str = 'inclusive') -> ObjectiveSpec:
    """The spec every benchmark uses for ``objective``: eps 0.1 for label smoothing, 1.0 for the prefix ones."""
    return ObjectiveSpec(objective, eps=EPS.get(objective, 1.0), support=support)


def sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def memory_now(device: str) -> int:
    """Bytes: CUDA allocated, or the CPU process's peak RSS so far."""
    if device == 'cuda':
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def input_stds(kind: str, hidden: int) -> list[float]:
    """Standard deviations of the random inputs, chosen so that the logits look like a language
    model's (std 1-2): ``kind='loss'``: logits N(0, 2²); ``kind='head'``: hidden states N(0, 1)
    (unit RMS after the final norm) and head weight N(0, 1/d), so logits N(0, 1). A unit-std weight
    would give logits of std √d ≈ 39, whose softmax underflows to float32 denormals: on CPU that
    made every matmul reading the logit gradient ~5x slower and the timings meaningless."""
    if kind == 'loss':
        return [2.0]
    return [1.0, hidden ** -0.5]


def refill_inputs(inputs: list[torch.Tensor], stds: list[float], device: str) -> None:
    """Fresh N(0, std^2) values in every benchmark input and no gradient left from the last call."""
    with torch.no_grad():
        for x, std in zip(inputs, stds):
            x.normal_(std=std)
            x.grad = None
    sync(device)


def dense_targets(targets: SparseTargets, n_cols: int) -> torch.Tensor:
    """[N, n_cols] float64 target distributions: the sparse rows scattered plus the uniform part."""
    q = torch.zeros(targets.ids.shape[0], n_cols, dtype=torch.float64, device=targets.ids.device)
    q.scatter_add_(1, targets.ids, targets.weights.double())
    q[:, : targets.uniform_count] += targets.uniform_mass
    return q


def dense_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, targets: SparseTargets) -> dict:
    """float64, dense: ``z = h W^T``, ``loss = mean_valid -Σ_i q_i·log_softmax(z)_i``, the gold NLL,
    and the gradients of ``loss`` w.r.t. ``z``, ``h`` and ``W`` by autograd."""
    h, w = (x.detach().double().clone().requires_grad_() for x in (hidden, weight))
    z = h @ w.t()
    z.retain_grad()
    valid = labels != IGNORE
    logp = torch.log_softmax(z, dim=-1)
    loss = -(dense_targets(targets, z.shape[1]) * logp).sum(-1)[valid].mean()
    nll = -logp.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)[valid].mean()
    loss.backward()
    return {'loss': loss.detach(), 'nll': nll.detach(), 'grad_logits': z.grad, 'grad_hidden': h.grad, 'grad_weight': w.grad}


def run_path(path: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, targets: SparseTargets,
             autocast: torch.dtype | None = None, chunk_tokens: int | None = None) -> dict:
    """One fwd+bwd of the loss path ``logits`` (``z = h W^T``, then ``soft_target_cross_entropy``) or
    ``fused`` (``fused_linear_soft_target_cross_entropy``), optionally under autocast to ``autocast``;
    returns the loss, NLL and gradients w.r.t. ``h`` and ``W`` (and ``z`` on the logits path)."""
    if path not in PATHS:
        raise ValueError(f'path must be one of {PATHS}, got {path!r}')
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    device = hidden.device.type
    amp = torch.autocast(device, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    out = {}
    with amp:
        if path == 'fused':
            loss, nll = fused_linear_soft_target_cross_entropy(h, w, labels, targets, IGNORE, chunk_tokens)
        else:
            z = h @ w.t()
            z.retain_grad()
            loss, nll = soft_target_cross_entropy(z, labels, targets, IGNORE)
    loss.backward()
    if path == 'logits':
        out['grad_logits'] = z.grad
    return {**out, 'loss': loss.detach(), 'nll': nll.detach(), 'grad_hidden': h.grad, 'grad_weight': w.grad}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |value - reference| / max |reference|``, in float64."""
    return ((value.double() - reference).abs().max() / reference.abs().max().clamp_min(1e-300)).item()


def errors_against(result: dict, reference: dict) -> dict[str, float]:
    """``relative_error`` of every quantity of ``result`` that the reference has."""
    return {key: relative_error(value, reference[key]) for key, value in result.items() if key in reference}
