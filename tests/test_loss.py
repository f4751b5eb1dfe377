"""soft_target_cross_entropy against a dense reference: every objective, ignored positions,
loss and gradient, float64 exactness, several row chunks, float32/bfloat16 logits, the real
Llama-3 vocabulary."""

from __future__ import annotations

import pytest
import torch

import prefix_composer.losses.soft_target as loss_module
from prefix_composer.losses.soft_target import soft_target_cross_entropy
from prefix_composer.objectives.targets import OBJECTIVES, ObjectiveSpec, SparseTargets, TargetTable, build_target_table

from conftest import objective_spec

IGNORE = -100
# A byte vocabulary with nested prefixes, a special id (5) and pieces without prefixes.
PIECES = [b'a', b'b', b'ab', b'abc', b'ba', b'<s>', b'abcd', b'c', b'bab', b'ca', b'cab', b'<']
SPECIALS = {5}
PADDED_VOCAB = len(PIECES) + 3  # model vocab_size past the tokenizer: embedding padding ids
SPECS = [objective_spec(o, eps=0.3, tau=0.7) for o in OBJECTIVES] + [
    ObjectiveSpec('prefix_softmax', eps=1.0, tau=0.5, support='strict'),
    ObjectiveSpec('prefix_softmax_norm', eps=1.0, tau=2.0),
]


def dense_targets(table: TargetTable, labels: torch.Tensor, n_cols: int) -> torch.Tensor:
    """[N, n_cols] target distributions built independently of the loss: the table rows scattered
    densely plus ``uniform_mass`` on the first ``uniform_count`` ids (ignored rows are zero)."""
    q = torch.zeros(labels.shape[0], n_cols, dtype=torch.float64)
    for t, y in enumerate(labels.tolist()):
        if y == IGNORE:
            continue
        for i, w in zip(table.ids[y].tolist(), table.weights[y].tolist()):
            q[t, i] += w
        q[t, : table.uniform_count] += table.uniform_mass
    return q


def dense_reference(logits: torch.Tensor, labels: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``-(q · log_softmax(z)).sum(-1)`` and mean gold NLL over the non-ignored rows."""
    valid = labels != IGNORE
    logp = torch.log_softmax(logits.to(q.dtype), dim=-1)
    gold = logp.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
    return -(q * logp).sum(-1)[valid].mean(), -gold[valid].mean()


def example(n: int, n_cols: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with a wide range and labels with ignored positions, including a special id."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, n_cols, generator=gen, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, len(PIECES), (n,), generator=gen)
    labels[::4] = IGNORE
    labels[1] = 5
    return logits, labels


def target_sum_error(q: torch.Tensor, labels: torch.Tensor) -> float:
    """max_t |1 - Σ_i q_t[i]| over valid rows: float32 table weights sum to 1 only to ~K·2^-24.

    The loss's gradient is ``s·(softmax - q)`` (it uses Σq = 1); autograd of the dense reference
    gives ``s·(Σq·softmax - q)``, so the two differ by at most ``s·|1 - Σq|`` per logit (Σ softmax = 1)."""
    return (q.sum(-1) - 1).abs()[labels != IGNORE].max().item()


# float64 logits: loss and NLL are float64 sums of a few dozen terms of size <= ~50, so both sides
# agree to a few float64 ulps (measured 3e-16 relative); 1e-13 leaves 300x room and fails a float32 step.
FLOAT64_RTOL = 1e-13
# float32 accumulation (float32 logits, or exact bfloat16 logits upcast): rounding of ~V float32 terms,
# measured <= 5e-8 relative on the loss and <= 2e-7 of max|grad| on float32 gradients.
FLOAT32_RTOL = 1e-6
# bfloat16 gradients: each entry rounded to 8 significant bits, |error| <= 2^-9·|g| (+ the float32 error).
BF16_REL = 2.0 ** -8


def loss_and_grad(logits, labels, targets, grad_scale):
    z = logits.clone().requires_grad_()
    loss, nll = soft_target_cross_entropy(z, labels, targets, IGNORE)
    (grad_scale * loss).backward()
    return loss.detach(), nll, z.grad


@pytest.mark.parametrize('spec', SPECS, ids=lambda s: f'{s.objective}-{s.support}')
@pytest.mark.parametrize('grad_scale', [1.0, -0.7])
def test_matches_dense_reference_float64(spec, grad_scale, monkeypatch):
    monkeypatch.setitem(loss_module._CHUNK_ELEMENTS, 'cpu', 3 * PADDED_VOCAB)  # 3 rows per chunk, ragged end
    table = build_target_table(PIECES, SPECIALS, spec)
    logits, labels = example(11, PADDED_VOCAB, torch.float64)
    q = dense_targets(table, labels, PADDED_VOCAB)
    assert torch.allclose(q.sum(-1)[labels != IGNORE], torch.ones((), dtype=torch.float64), atol=1e-6)

    loss, nll, grad = loss_and_grad(logits, labels, table.lookup(labels, IGNORE), grad_scale)

    z = logits.clone().requires_grad_()
    ref_loss, ref_nll = dense_reference(z, labels, q)
    (grad_scale * ref_loss).backward()
    assert abs(loss.item() - ref_loss.item()) <= FLOAT64_RTOL * abs(ref_loss.item())
    assert abs(nll.item() - ref_nll.item()) <= FLOAT64_RTOL * abs(ref_nll.item())
    scale = abs(grad_scale) / (labels != IGNORE).sum().item()
    bound = scale * target_sum_error(q, labels) + 1e-15
    assert (grad - z.grad).abs().max().item() <= bound
    assert torch.all(grad[labels == IGNORE] == 0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('objective', ['label_smoothing', 'prefix_softmax'])
def test_low_precision_logits_match_float64(dtype, objective, monkeypatch):
    """bfloat16 logits are exact in float32, so loss and NLL carry only float32 rounding; the gradient
    is float32 rounding, then (bfloat16 logits) rounding to bfloat16."""
    monkeypatch.setitem(loss_module._CHUNK_ELEMENTS, 'cpu', 4 * 1000)
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec(objective, eps=0.5))
    logits, labels = example(9, 1000, dtype, seed=1)
    loss, nll, grad = loss_and_grad(logits, labels, table.lookup(labels, IGNORE), 1.0)
    z = logits.double().requires_grad_()
    ref_loss, ref_nll = dense_reference(z, labels, dense_targets(table, labels, 1000))
    ref_loss.backward()
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert abs(loss.item() - ref_loss.item()) < FLOAT32_RTOL * abs(ref_loss.item())
    assert abs(nll.item() - ref_nll.item()) < FLOAT32_RTOL * abs(ref_nll.item())
    rounding = BF16_REL * z.grad.abs() if dtype == torch.bfloat16 else 0.0
    assert torch.all((grad.double() - z.grad).abs() <= rounding + FLOAT32_RTOL * z.grad.abs().max())


def test_gradient_overwrites_the_logits_in_place():
    """The memory contract: backward allocates no [N, V] gradient; a leaf's .grad is its own storage."""
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec('prefix_simple', eps=0.2))
    logits, labels = example(6, PADDED_VOCAB, torch.float32)
    z = logits.clone().requires_grad_()
    soft_target_cross_entropy(z, labels, table.lookup(labels, IGNORE), IGNORE)[0].backward()
    assert z.grad.data_ptr() == z.data_ptr()
    assert torch.allclose(z.grad.sum(-1), torch.zeros(6), atol=1e-6)  # softmax - q sums to 0 per row


def test_a_node_that_saved_the_logits_cannot_use_the_overwritten_values():
    """The consumed logits are never read silently by autograd: a node that saved them before the
    loss (here ``z**2``) raises at backward, because the loss's writes bumped their version."""
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec('prefix_softmax', eps=0.5))
    logits, labels = example(6, PADDED_VOCAB, torch.float32)
    leaf = logits.clone().requires_grad_()
    z = leaf * 1.0  # the model's logits are not a leaf
    squares = (z ** 2).sum()
    loss, _ = soft_target_cross_entropy(z, labels, table.lookup(labels, IGNORE), IGNORE)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        (loss + squares).backward()
    # without the other node the same graph backpropagates: the loss alone is fine
    z = leaf * 1.0
    soft_target_cross_entropy(z, labels, table.lookup(labels, IGNORE), IGNORE)[0].backward()
    assert torch.allclose(leaf.grad.sum(-1), torch.zeros(6), atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_forward_leaves_log_softmax_in_full_precision_logits(dtype):
    """The forward's contract: float32/float64 logits are overwritten by their log_softmax (the
    backward needs no other copy), half-precision logits are left as they are."""
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec('label_smoothing', eps=0.1))
    logits, labels = example(5, PADDED_VOCAB, dtype)
    z = logits.clone().requires_grad_()
    soft_target_cross_entropy(z, labels, table.lookup(labels, IGNORE), IGNORE)
    expected = logits if dtype == torch.bfloat16 else torch.log_softmax(logits, dim=-1)
    assert torch.equal(z.detach(), expected)


def test_gold_far_below_the_max_keeps_gradient_exact():
    """lse is read from the gold column: a gold logit 200 below the row's max must not cost accuracy."""
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec('label_smoothing', eps=0.1))
    logits, labels = example(6, PADDED_VOCAB, torch.float64, seed=5)
    gold_rows = (labels != IGNORE).nonzero().squeeze(1)
    logits[gold_rows, labels[gold_rows]] -= 200.0
    z = logits.clone().requires_grad_()
    q = dense_targets(table, labels, PADDED_VOCAB)
    ref_loss, _ = dense_reference(z, labels, q)
    ref_loss.backward()
    sum_error = target_sum_error(q, labels) / len(gold_rows)
    for dtype, tol in ((torch.float64, FLOAT64_RTOL), (torch.float32, FLOAT32_RTOL)):
        loss, _, grad = loss_and_grad(logits.to(dtype), labels, table.lookup(labels, IGNORE), 1.0)
        assert abs(loss.item() - ref_loss.item()) < tol * ref_loss.item()
        assert (grad.double() - z.grad).abs().max().item() <= sum_error + tol * z.grad.abs().max().item()


def test_all_ignored_gives_zero_loss_and_gradient():
    logits, _ = example(4, PADDED_VOCAB, torch.float64)
    labels = torch.full((4,), IGNORE)
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec('label_smoothing', eps=0.1))
    loss, nll, grad = loss_and_grad(logits, labels, table.lookup(labels, IGNORE), 1.0)
    assert loss.item() == 0.0 and nll.item() == 0.0 and torch.all(grad == 0)


def test_real_llama3_vocabulary_row_by_row(byte_vocab):
    """Float32 logits over all 128,256 ids, checked one row at a time against the dense reference."""
    pieces, specials = byte_vocab
    vocab = len(pieces)
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([vocab - 1, IGNORE, 3, 1000, 50000, 128000])  # 128000 = <|begin_of_text|>
    for spec in (ObjectiveSpec('prefix_softmax', eps=1.0), ObjectiveSpec('label_smoothing', eps=0.1)):
        table = build_target_table(pieces, specials, spec)
        logits = 2 * torch.randn(len(labels), vocab, generator=gen)
        loss, nll, grad = loss_and_grad(logits, labels, table.lookup(labels, IGNORE), 1.0)
        valid = (labels != IGNORE).nonzero().squeeze(1).tolist()
        ref_loss = ref_nll = 0.0
        for t in valid:
            z = logits[t: t + 1].double().requires_grad_()
            row_loss, row_nll = dense_reference(z, labels[t: t + 1], dense_targets(table, labels[t: t + 1], vocab))
            row_loss.backward()
            ref_loss, ref_nll = ref_loss + row_loss.item(), ref_nll + row_nll.item()
            assert torch.allclose(grad[t].double(), z.grad[0] / len(valid), atol=1e-8)
        assert abs(loss.item() - ref_loss / len(valid)) < FLOAT32_RTOL * abs(ref_loss / len(valid))
        assert abs(nll.item() - ref_nll / len(valid)) < FLOAT32_RTOL * abs(ref_nll / len(valid))
        assert torch.all(grad[1] == 0)


def test_bad_shapes_are_rejected():
    z = torch.zeros(4, 10)
    one_hot = SparseTargets(torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1))
    with pytest.raises(ValueError, match='Expected logits'):
        soft_target_cross_entropy(z, torch.zeros(3, dtype=torch.long), one_hot)
    with pytest.raises(ValueError, match='Expected logits'):
        soft_target_cross_entropy(z[None], torch.zeros(4, dtype=torch.long), one_hot)
    with pytest.raises(ValueError, match='uniform_count'):
        soft_target_cross_entropy(z, torch.zeros(4, dtype=torch.long), SparseTargets(one_hot.ids, one_hot.weights, 0.1, 11))
