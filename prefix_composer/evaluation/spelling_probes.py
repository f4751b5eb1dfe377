"""Spelling probes of the token embedding matrix: does each token's vector encode its letters?

Items are the probe tokens: the non-special ids whose bytes are ASCII letters with an optional
leading space (`` person``, ``ality``), at most ``max_tokens`` of them drawn with ``seed`` (the same
ids for every run). Features: the rows of the input embedding matrix (tied with the LM head),
standardised on the training folds. Probes, each a scikit-learn ``LogisticRegression`` fitted on
``folds - 1`` folds of a seeded ``KFold`` over the probe tokens and scored on the held-out fold:

* ``probe_contains``: for each letter a-z, "the token's letters contain it" (26 binary probes);
  a token's ``acc`` is the fraction of the 26 it gets right, so the mean over tokens is the macro
  accuracy over letters;
* ``probe_first_letter``: the token's first letter (26 classes), ``acc`` 0/1;
* ``probe_length``: the number of letters in buckets 1, 2-3, 4-6, 7+, ``acc`` 0/1.

Baselines (header ``baselines``, mean accuracy over the probe tokens): ``majority`` predicts the
training folds' most frequent class; ``untrained`` is the same probe on the step-0 embedding of the
run (the records of batch 0, written when a fresh run starts), null when those are absent.
Only global rank 0 computes; the records are the same for any number of ranks.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prefix_composer.evaluation.records import Records, measurement_records

PROBES = ('probe_contains', 'probe_first_letter', 'probe_length')
LETTERS = 'abcdefghijklmnopqrstuvwxyz'
LENGTH_STARTS = (2, 4, 7)  # letter counts where the next length bucket starts: 1, 2-3, 4-6, 7+
_WORD = re.compile(rb'^ ?([A-Za-z]+)$')


PROBE_DEFAULTS = {'max_tokens': 4096, 'folds': 5, 'seed': 0, 'max_iter': 100}


def probe_settings(config: Mapping[str, Any], key: str = 'callbacks.lm_eval.probes') -> dict[str, Any]:
    """``PROBE_DEFAULTS`` updated by ``config`` (the YAML block ``key``), checked: ``max_tokens`` null or an
    int >= 100, ``folds`` an int >= 2, ``seed`` an int, ``max_iter`` an int >= 1."""
    unknown = sorted(set(config) - set(PROBE_DEFAULTS))
    if unknown:
        raise ValueError(f'{key} has unknown keys {unknown}; the keys are {sorted(PROBE_DEFAULTS)}.')
    settings = {**PROBE_DEFAULTS, **config}
    checks = {'max_tokens': lambda v: v is None or (isinstance(v, int) and v >= 100),
              'folds': lambda v: isinstance(v, int) and v >= 2, 'seed': lambda v: isinstance(v, int),
              'max_iter': lambda v: isinstance(v, int) and v >= 1}
    for name, ok in checks.items():
        if isinstance(settings[name], bool) or not ok(settings[name]):
            raise ValueError(f'{key}.{name} = {settings[name]!r} is invalid: max_tokens is null or an int >= 100, '
                             f'folds an int >= 2, seed an int, max_iter an int >= 1 (defaults {PROBE_DEFAULTS}).')
    return settings


def probe_tokens(pieces: list[bytes], specials: set[int], max_tokens: Optional[int], seed: int) -> dict[int, str]:
    """``{id: lower-case letters}`` of the probe tokens (all, or ``max_tokens`` drawn with ``seed``), by id."""
    words = {i: m.group(1).decode('ascii').lower() for i, p in enumerate(pieces)
             if i not in specials and (m := _WORD.match(p))}
    ids = sorted(words)
    if max_tokens is not None and max_tokens < len(ids):
        ids = sorted(np.random.default_rng(seed).choice(ids, size=max_tokens, replace=False).tolist())
    return {i: words[i] for i in ids}


def probe_labels(words: Mapping[int, str]) -> dict[str, np.ndarray]:
    """The targets of every probe, rows in ``words`` order: ``contains`` [n, 26] 0/1,
    ``first_letter`` [n] 0..25, ``length`` [n] 0..3."""
    letters = list(words.values())
    return {
        'contains': np.array([[letter in w for letter in LETTERS] for w in letters], dtype=np.int64),
        'first_letter': np.array([LETTERS.index(w[0]) for w in letters], dtype=np.int64),
        'length': np.searchsorted(LENGTH_STARTS, [len(w) for w in letters], side='right').astype(np.int64),
    }


def held_out_predictions(features: np.ndarray, target: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                         max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """(logistic-regression, majority) predictions of every row from the fold that holds it out."""
    probe, majority = np.empty_like(target), np.empty_like(target)
    for train, test in folds:
        classes, counts = np.unique(target[train], return_counts=True)
        majority[test] = classes[np.argmax(counts)]
        if len(classes) == 1:
            probe[test] = classes[0]
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
        probe[test] = model.fit(features[train], target[train]).predict(features[test])
    return probe, majority


def spelling_probes(embedding: torch.Tensor, words: Mapping[int, str], folds: int, seed: int,
                    max_iter: int = 100) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(items, majority macro accuracy per probe) for the [V, d] ``embedding`` on the probe tokens ``words``."""
    ids = list(words)
    features = embedding.detach()[ids].to(torch.float64).cpu().numpy()
    splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(features))
    labels = probe_labels(words)
    correct, majority = {}, {}
    contains = [held_out_predictions(features, labels['contains'][:, k], splits, max_iter) for k in range(len(LETTERS))]
    truth = labels['contains'].T
    correct['probe_contains'] = np.mean([p == t for (p, _), t in zip(contains, truth)], axis=0)
    majority['probe_contains'] = float(np.mean([m == t for (_, m), t in zip(contains, truth)]))
    for probe, key in (('probe_first_letter', 'first_letter'), ('probe_length', 'length')):
        predicted, baseline = held_out_predictions(features, labels[key], splits, max_iter)
        correct[probe] = (predicted == labels[key]).astype(np.float64)
        majority[probe] = float(np.mean(baseline == labels[key]))
    items = [{'task': probe, 'doc_id': int(token), 'metrics': {'acc': float(correct[probe][row])}, 'letters': words[token]}
             for probe in PROBES for row, token in enumerate(ids)]
    return items, majority


def macro_accuracy(items: list[dict[str, Any]]) -> dict[str, float]:
    """Mean ``acc`` per probe task."""
    return {probe: float(np.mean([i['metrics']['acc'] for i in items if i['task'] == probe])) for probe in PROBES}


def probe_records(embedding: torch.Tensor, pieces: list[bytes], specials: set[int], settings: Mapping[str, Any],
                  run: Mapping[str, Any], batch: int, tokens: int, untrained: Optional[Mapping[str, float]],
                  tokenizer_hash: str) -> Records:
    """The probes records of ``embedding``; ``settings``: ``max_tokens``, ``folds``, ``seed``, ``max_iter``;
    ``untrained``: the step-0 macro accuracies (``macro_accuracy`` of batch 0's items) or None."""
    words = probe_tokens(pieces, specials, settings['max_tokens'], settings['seed'])
    items, majority = spelling_probes(embedding, words, settings['folds'], settings['seed'], settings['max_iter'])
    baselines = {p: {'acc': {'majority': majority[p], 'untrained': None if untrained is None else untrained[p]}}
                 for p in PROBES}
    header_settings = {'tasks': list(PROBES), 'items': {p: {'n': len(words)} for p in PROBES},
                       'tokenizer_hash': tokenizer_hash, **settings}
    return measurement_records('probes', run, batch, tokens, header_settings, {p: {'acc': True} for p in PROBES}, items,
                               info={}, baselines=baselines)
