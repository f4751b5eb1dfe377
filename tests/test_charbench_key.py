"""CharBench's answer key, item counts and group averages, through lm-eval's own task loading and metrics.

The random model of ``test_charbench.py`` ignores its inputs, so it scores at chance whatever the
key says. Here the scoring models read the choice strings lm-eval builds: the correct choice is
recomputed from each item's fields (``test_charbench.expected``, never from ``gold``). A model that
ranks it first must get acc = acc_norm = 1 on every subtask, one that ranks it last 0, and one that
is right on a known, subtask-dependent subset of items must get each task's item mean and, for
each group, the mean over all of its items (README: "averaged over items").
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from typing import Callable

import lm_eval
import pytest
from lm_eval.api.model import LM

from prefix_composer.evaluation.charbench.generate import SUBTASKS
from prefix_composer.evaluation.tasks import build_task_manager
from test_charbench import SPLITS, TEST_ITEMS, expected

# charbench/README.md: "300 test items per subtask and split ... 160 few-shot items" (8 per subtask and split)
DOCUMENTED_TEST_ITEMS = 300
DOCUMENTED_DEV_ITEMS = 8
LEAVES = [f'charbench_{sub}_{split}' for sub in SUBTASKS for split in SPLITS]
GROUPS = {f'charbench_{split}': [f'charbench_{sub}_{split}' for sub in SUBTASKS] for split in SPLITS}
GROUPS['charbench'] = LEAVES


class KeyedLM(LM):
    """Log-likelihood 0 for the choice it prefers and -1 for the others: it prefers the correct
    choice of a document when ``right(doc)``, else it prefers every other choice."""

    def __init__(self, right: Callable[[dict], bool]):
        super().__init__()
        self.right = right
        self.requests: Counter = Counter()
        self.continuations: dict[tuple[str, int], set[str]] = {}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        scores = []
        for request in requests:
            context, continuation = request.args
            query, answer = expected(request.doc)
            assert context == query, (context, query)  # zero-shot prompt, empty target delimiter
            key = (request.task_name, request.doc_id)
            self.requests[key] += 1
            self.continuations.setdefault(key, set()).add(continuation)
            scores.append((0.0 if (continuation == answer) == self.right(request.doc) else -1.0, False))
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def evaluate(model: LM) -> dict:
    return lm_eval.simple_evaluate(
        model=model, tasks=['charbench'], task_manager=build_task_manager(['charbench']), bootstrap_iters=0,
        log_samples=False, random_seed=None, numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=None,
    )


def test_a_model_ranking_the_correct_choice_first_scores_one_everywhere():
    model = KeyedLM(lambda doc: True)
    out = evaluate(model)
    for name in [*LEAVES, *GROUPS]:
        assert (out['results'][name]['acc,none'], out['results'][name]['acc_norm,none']) == (1.0, 1.0), name
    # every choice of every test item was scored exactly once, as the continuation after the query
    for (sub, split), items in TEST_ITEMS.items():
        for doc_id, item in enumerate(items):
            key = (f'charbench_{sub}_{split}', doc_id)
            assert model.requests[key] == len(item['choices']) and model.continuations[key] == set(item['choices'])
    assert sum(model.requests.values()) == sum(len(d['choices']) for items in TEST_ITEMS.values() for d in items)


def test_a_model_ranking_the_correct_choice_last_scores_zero_everywhere():
    out = evaluate(KeyedLM(lambda doc: False))
    for name in [*LEAVES, *GROUPS]:
        assert (out['results'][name]['acc,none'], out['results'][name]['acc_norm,none']) == (0.0, 0.0), name


def partly_right(doc: dict) -> bool:
    """Right on about 1/2 of the items of the first subtask, 1/3 of the second, ... (by item id)."""
    return zlib.crc32(doc['id'].encode()) % (2 + list(SUBTASKS).index(doc['subtask'])) == 0


def test_task_and_group_scores_are_item_means():
    out = evaluate(KeyedLM(partly_right))
    right = {f'charbench_{sub}_{split}': [partly_right(d) for d in items] for (sub, split), items in TEST_ITEMS.items()}
    for name, outcomes in right.items():
        assert out['results'][name]['acc,none'] == out['results'][name]['acc_norm,none'] == sum(outcomes) / len(outcomes)
    assert len({out['results'][name]['acc,none'] for name in LEAVES}) > 10  # the subtasks really differ
    for group, members in GROUPS.items():
        outcomes = [o for name in members for o in right[name]]
        for metric in ('acc,none', 'acc_norm,none'):
            assert math.isclose(out['results'][group][metric], sum(outcomes) / len(outcomes), rel_tol=1e-12), group
    for name in LEAVES:
        assert out['n-samples'][name] == {'original': DOCUMENTED_TEST_ITEMS, 'effective': DOCUMENTED_TEST_ITEMS}


@pytest.mark.parametrize('name', LEAVES)
def test_each_subtask_has_its_documented_items(name):
    task = build_task_manager([name]).load([name])['tasks'][name]
    assert len(task.eval_docs) == DOCUMENTED_TEST_ITEMS
    few_shot = task.fewshot_docs()
    assert len(few_shot) == DOCUMENTED_DEV_ITEMS
    sub, split = name.split('_')[1:]
    assert all(d['subtask'] == sub and d['split'] == split and d['fold'] == 'dev' for d in few_shot)
