"""The fused chunked head+loss against the dense reference (loss, NLL, gradients w.r.t. hidden
states and weight) for every objective, and the model's ``loss_impl`` switch."""

from __future__ import annotations

import pytest
import torch
from test_loss import (FLOAT32_RTOL, FLOAT64_RTOL, IGNORE, PADDED_VOCAB, PIECES, SPECIALS, SPECS, dense_reference,
                       dense_targets, target_sum_error)

from prefix_composer.constants import IGNORE_INDEX, SOFT_TARGETS_KEY
from prefix_composer.losses.fused import fused_linear_soft_target_cross_entropy
from prefix_composer.losses.soft_target import soft_target_cross_entropy
from prefix_composer.objectives.labels import next_token_labels
from prefix_composer.training.model import PrefixLlamaForCausalLM
from prefix_composer.objectives.targets import ObjectiveSpec, SparseTargets, build_target_table


def head_example(n: int, d: int, n_cols: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    weight = torch.randn(n_cols, d, generator=gen, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, len(PIECES), (n,), generator=gen)
    labels[::4] = IGNORE
    labels[1] = 5
    return hidden, weight, labels


def fused_with_grads(hidden, weight, labels, targets, grad_scale=1.0, chunk_tokens=None):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, nll = fused_linear_soft_target_cross_entropy(h, w, labels, targets, IGNORE, chunk_tokens)
    (grad_scale * loss).backward()
    return loss.detach(), nll, h.grad, w.grad


@pytest.mark.parametrize('spec', SPECS, ids=lambda s: f'{s.objective}-{s.support}')
@pytest.mark.parametrize('chunk_tokens,grad_scale', [(3, 2.5), (None, -0.7)])
def test_fused_matches_dense_reference_float64(spec, chunk_tokens, grad_scale):
    table = build_target_table(PIECES, SPECIALS, spec)
    hidden, weight, labels = head_example(11, 5, PADDED_VOCAB, torch.float64)
    loss, nll, grad_h, grad_w = fused_with_grads(
        hidden, weight, labels, table.lookup(labels, IGNORE), grad_scale, chunk_tokens,
    )

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    q = dense_targets(table, labels, PADDED_VOCAB)
    ref_loss, ref_nll = dense_reference(h @ w.t(), labels, q)
    (grad_scale * ref_loss).backward()
    assert abs(loss.item() - ref_loss.item()) <= FLOAT64_RTOL * abs(ref_loss.item())
    assert abs(nll.item() - ref_nll.item()) <= FLOAT64_RTOL * abs(ref_nll.item())
    # logit gradients differ by <= s·|1 - Σq| times softmax (test_loss.target_sum_error); through the head:
    # grad_h_t = Σ_i g_ti W_i (Σ_i softmax_ti = 1), grad_W_i = Σ_t g_ti h_t (at most n_valid rows)
    n_valid = (labels != IGNORE).sum().item()
    logit_bound = abs(grad_scale) / n_valid * target_sum_error(q, labels)
    assert (grad_h - h.grad).abs().max().item() <= logit_bound * weight.abs().max().item() + 1e-14
    assert (grad_w - w.grad).abs().max().item() <= logit_bound * n_valid * hidden.abs().max().item() + 1e-14
    assert torch.all(grad_h[labels == IGNORE] == 0)


def test_fused_float32_matches_logits_path_for_every_chunking():
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec('prefix_softmax', eps=0.6))
    hidden, weight, labels = head_example(13, 8, PADDED_VOCAB, torch.float32, seed=2)
    targets = table.lookup(labels, IGNORE)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref_loss, ref_nll = soft_target_cross_entropy(h @ w.t(), labels, targets, IGNORE)
    ref_loss.backward()
    for chunk_tokens in (1, 4, 13, 100):
        loss, nll, grad_h, grad_w = fused_with_grads(hidden, weight, labels, targets, chunk_tokens=chunk_tokens)
        assert torch.allclose(loss, ref_loss, rtol=FLOAT32_RTOL) and torch.allclose(nll, ref_nll, rtol=FLOAT32_RTOL)
        assert torch.allclose(grad_h, h.grad, rtol=0, atol=FLOAT32_RTOL * h.grad.abs().max().item())
        assert torch.allclose(grad_w, w.grad, rtol=0, atol=FLOAT32_RTOL * w.grad.abs().max().item())


def test_fused_under_bfloat16_autocast_matches_float64():
    table = build_target_table(PIECES, SPECIALS, ObjectiveSpec('label_smoothing', eps=0.2))
    hidden, weight, labels = head_example(16, 32, 300, torch.float32, seed=4)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss, _ = fused_linear_soft_target_cross_entropy(h, w, labels, table.lookup(labels, IGNORE), IGNORE, 5)
    loss.backward()
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref_loss, _ = dense_reference(h64 @ w64.t(), labels, dense_targets(table, labels, 300))
    ref_loss.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    # bf16 logits carry 2^-9 relative rounding and the loss is a mean of rows that are 2-Lipschitz in
    # max|Δz|: 2^-8 of the loss (measured 5e-4). The gradients go through two more bf16 matmuls whose
    # inputs and outputs are rounded: 2e-2 of their largest entry (measured 1.7e-2).
    assert abs(loss.item() - ref_loss.item()) < 2.0 ** -8 * ref_loss.item()
    assert torch.allclose(h.grad.double(), h64.grad, atol=2e-2 * h64.grad.abs().max().item())
    assert torch.allclose(w.grad.double(), w64.grad, atol=2e-2 * w64.grad.abs().max().item())


def test_second_backward_raises():
    hidden, weight, labels = head_example(4, 3, PADDED_VOCAB, torch.float32)
    targets = SparseTargets(labels.clamp_min(0)[:, None], torch.ones(4, 1))
    loss, _ = fused_linear_soft_target_cross_entropy(hidden.requires_grad_(), weight, labels, targets, IGNORE)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='only once'):
        loss.backward()


def test_bad_inputs_are_rejected():
    targets = SparseTargets(torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1))
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match='hidden'):
        fused_linear_soft_target_cross_entropy(torch.zeros(4, 3), torch.zeros(10, 2), labels, targets)
    with pytest.raises(ValueError, match='Expected logits'):
        fused_linear_soft_target_cross_entropy(torch.zeros(4, 3), torch.zeros(10, 3), labels[:3], targets)
    with pytest.raises(ValueError, match='chunk_tokens'):
        fused_linear_soft_target_cross_entropy(torch.zeros(4, 3), torch.zeros(10, 3), labels, targets, chunk_tokens=0)


TINY_LLAMA = dict(
    vocab_size=128256, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    intermediate_size=32, max_position_embeddings=16, tie_word_embeddings=True,
)


@pytest.mark.parametrize('spec', [None, ObjectiveSpec('label_smoothing', eps=0.1), ObjectiveSpec('prefix_softmax', eps=0.5)],
                         ids=lambda s: 'one_hot' if s is None else s.objective)
def test_model_loss_impl_fused_equals_logits(tokenizer, byte_vocab, spec):
    """Same loss and parameter gradients from both training paths, with one-hot targets and with the
    soft targets of the real vocabulary's table put in the batch as the algorithm does; eval returns
    full logits for both."""
    torch.manual_seed(0)
    text = ' personality strawberry personnel personalized spelling letters'  # tokens with byte prefixes
    ids = torch.tensor(tokenizer(text * 4, add_special_tokens=False).input_ids[:24]).reshape(2, 12)
    batch = {'input_ids': ids, 'labels': ids.clone(), 'attention_mask': torch.ones_like(ids)}
    if spec is not None:
        table = build_target_table(*byte_vocab, spec)
        targets = table.lookup(next_token_labels(batch['labels']).reshape(-1), IGNORE_INDEX)
        assert (targets.weights > 0).sum() > (next_token_labels(batch['labels']) != IGNORE_INDEX).sum()  # really soft
        batch[SOFT_TARGETS_KEY] = targets
    models = {impl: PrefixLlamaForCausalLM(tokenizer, TINY_LLAMA, loss_impl=impl) for impl in ('fused', 'logits')}
    models['logits'].load_state_dict(models['fused'].state_dict())
    results = {}
    for impl, model in models.items():
        model.train()
        outputs = model(batch)
        assert (outputs.logits is None) == (impl == 'fused')
        losses = model.loss(outputs, batch)
        losses['total'].backward()
        results[impl] = (losses, {n: p.grad.clone() for n, p in model.named_parameters()})
        model.eval()
        with torch.no_grad():
            assert model(batch).logits.shape == (2, 12, 128256)
    (fused, fused_grads), (logits, logits_grads) = results['fused'], results['logits']
    assert torch.allclose(fused['total'], logits['total'], rtol=1e-6)
    assert torch.allclose(fused['nll'], logits['nll'], rtol=1e-6)
    for name, grad in logits_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_model_rejects_unknown_loss_impl(tokenizer):
    with pytest.raises(ValueError, match='loss_impl'):
        PrefixLlamaForCausalLM(tokenizer, TINY_LLAMA, loss_impl='liger')
