"""Validation metrics beside the NLL: prefix masses P(s)/R(s) and the run's own objective, against a
float64 dense brute force on a tiny vocabulary, and equal across objectives for the same weights."""

from __future__ import annotations

import pytest
import torch
from composer import Trainer
from composer.loggers import InMemoryLogger

from conftest import objective_spec
from lm_eval_helpers import tiny_model, token_loader
from prefix_composer.objectives.targets import OBJECTIVES, ObjectiveSpec, build_target_table
from prefix_composer.training import PrefixSmoothing
from prefix_composer.training.metrics import ObjectiveLoss, PrefixMassInclusive, PrefixMassStrict, VocabularyPrefixes
from test_loss import IGNORE, PIECES, SPECIALS, dense_reference, dense_targets, example
from test_targets import brute_force_prefixes


def dense_masses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean p(P(s)) and p(R(s)) over the non-ignored rows: float64 softmax, prefixes by bytes.startswith."""
    p = torch.softmax(logits.double(), dim=-1)
    strict, inclusive = [], []
    for t, y in enumerate(labels.tolist()):
        if y == IGNORE:
            continue
        mass = sum(float(p[t, i]) for i in brute_force_prefixes(y, PIECES, SPECIALS))
        strict.append(mass)
        inclusive.append(mass + float(p[t, y]))
    return sum(strict) / len(strict), sum(inclusive) / len(inclusive)


@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_metrics_equal_the_dense_brute_force(dtype, tol):
    prefixes = VocabularyPrefixes(lambda: (PIECES, SPECIALS))
    strict, inclusive = PrefixMassStrict(prefixes), PrefixMassInclusive(prefixes)
    batches = [example(24, len(PIECES) + 3, dtype, seed) for seed in (0, 1)]  # two updates, padded vocab
    for logits, labels in batches:
        strict.update(logits, labels)
        inclusive.update({'logits': logits}, labels)
    logits, labels = (torch.cat(parts) for parts in zip(*batches))
    want_strict, want_inclusive = dense_masses(logits, labels)
    assert 0 < want_strict < want_inclusive < 1
    assert float(strict.compute()) == pytest.approx(want_strict, rel=tol, abs=tol)
    assert float(inclusive.compute()) == pytest.approx(want_inclusive, rel=tol, abs=tol)
    for objective in OBJECTIVES:
        table = build_target_table(PIECES, SPECIALS, objective_spec(objective, eps=0.3, tau=0.7))
        loss = ObjectiveLoss()
        for z, y in batches:
            loss.update({'soft_targets': table.lookup(y, IGNORE)}, z, y)
        want, nll = dense_reference(logits.double(), labels, dense_targets(table, labels, logits.shape[1]))
        assert float(loss.compute()) == pytest.approx(float(want), rel=tol), objective
        plain = ObjectiveLoss()
        plain.update({}, logits, labels)  # no PrefixSmoothing targets in the batch: one-hot, the NLL
        assert float(plain.compute()) == pytest.approx(float(nll), rel=tol)


def evaluate(model, tokenizer, spec: ObjectiveSpec) -> dict[str, float]:
    """Composer's eval loop on fixed weights with the PrefixSmoothing algorithm of ``spec``."""
    memory = InMemoryLogger()
    trainer = Trainer(model=model, eval_dataloader=token_loader(tokenizer, samples=8), loggers=[memory],
                      algorithms=[PrefixSmoothing(**vars(spec))], device='cpu', progress_bar=False, log_to_console=False)
    trainer.eval()
    trainer.close()
    return {k.split('/')[-1]: float(v[-1][1]) for k, v in memory.data.items() if k.startswith('metrics/eval/')}


def test_prefix_masses_are_equal_across_objectives_for_the_same_weights(tokenizer):
    model = tiny_model(tokenizer)
    ce = evaluate(model, tokenizer, ObjectiveSpec('ce'))
    prefix = evaluate(model, tokenizer, ObjectiveSpec('prefix_softmax', eps=1.0))
    for name in ('LanguageCrossEntropy', 'PrefixMassStrict', 'PrefixMassInclusive'):
        assert prefix[name] == ce[name], name
    assert 0 < ce['PrefixMassStrict'] < ce['PrefixMassInclusive'] < 1
    assert ce['ObjectiveLoss'] == pytest.approx(ce['LanguageCrossEntropy'], rel=1e-6)  # ce's objective is the NLL
    assert abs(prefix['ObjectiveLoss'] - prefix['LanguageCrossEntropy']) > 1e-3
