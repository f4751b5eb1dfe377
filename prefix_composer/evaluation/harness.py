"""lm-eval-harness on a live model, in place: ``evaluate_lm`` and the state it must leave untouched.

``evaluate_lm`` runs lm-eval's ``simple_evaluate`` (its task system and metrics) on the live
Hugging Face model through ``ShardedHFLM``: under DDP every rank scores ~1/N of the forward
batches and the scores are gathered, with results identical to one process. Every numeric
metric of every task and group is returned as ``<task>/<metric>`` (``acc``, ``acc_stderr``,
``acc_norm``, ``acc_norm_stderr``; a filter other than lm-eval's ``none`` is appended as
``<metric>/<filter>``). On global rank 0 it also returns what lm-eval computed per document
(``log_samples=True``), as the items and settings of a records file (``records.py``).

Side effects undone: lm-eval's global reseeding is switched off (``random_seed=None`` ...) and
the Python/numpy/torch/CUDA RNG states are restored anyway, so training after an evaluation is
bit-identical to training without one; every module's train/eval mode is restored
(``HFLM`` leaves the model in eval mode). The model is evaluated in place: never copied,
moved or cast (the trainer's AMP precision is applied as autocast).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import numbers
import random
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import lm_eval
import numpy as np
import torch
from composer.core import Precision
from composer.utils import dist
from lm_eval.api.group import Group
from lm_eval.api.task import Task
from lm_eval.evaluator import simple_evaluate
from lm_eval.tasks import TaskManager
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefix_composer.evaluation.adapter import ShardedHFLM
from prefix_composer.evaluation.records import RECORDS_FORMAT, RECORDS_VERSION, Records
from prefix_composer.tokenizer import tokenizer_content_hash

log = logging.getLogger(__name__)

METRIC_PREFIX = 'metrics/lm_eval'
AUTOCAST_DTYPES = {
    Precision.FP32: None,
    Precision.AMP_FP16: torch.float16,
    Precision.AMP_BF16: torch.bfloat16,
    Precision.AMP_FP8: torch.bfloat16,
}


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the Python, numpy, torch and CUDA global RNG states on exit."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def preserved_train_modes(model: torch.nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag on exit."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def metric_name(metric: str, filter_name: str) -> str:
    """lm-eval's ``(metric, filter)`` as this project names it: ``acc`` or ``exact_match/strict-match``."""
    return metric if filter_name == 'none' else f'{metric}/{filter_name}'


def flatten_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{'<task>/<metric>': value}`` for every numeric metric of every task and group.

    lm-eval keys metrics as ``<metric>,<filter>``: ``acc,none`` -> ``acc``,
    ``exact_match,strict-match`` -> ``exact_match/strict-match``. Non-numeric values (the alias,
    ``'N/A'`` stderr when bootstrapping is off) are dropped.
    """
    metrics = {}
    for section in ('results', 'groups'):
        for task, values in results.get(section, {}).items():
            for key, value in values.items():
                if ',' not in key or isinstance(value, bool) or not isinstance(value, numbers.Number):
                    continue
                metrics[f'{task}/{metric_name(*key.split(",", 1))}'] = float(value)
    return metrics


LOGLIKELIHOOD_OUTPUTS = ('multiple_choice', 'loglikelihood')


def gold_index(task: Task, doc: Mapping[str, Any]) -> Union[int, list[int]]:
    """The index of the correct choice of a multiple-choice ``doc``, as lm-eval's
    ``ConfigurableTask.process_results`` determines it (``doc_to_text`` for tasks with one context
    per choice such as winogrande, else ``doc_to_target``; a string target is looked up among the choices)."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = task.doc_to_choice(doc).index(gold)
    return gold


def item_records(samples: Mapping[str, list[dict[str, Any]]], tasks: Mapping[str, Task]) -> list[dict[str, Any]]:
    """One dict per (task, document) from lm-eval's logged samples, sorted by (task, doc_id):
    ``gold`` (multiple choice; else None), ``loglikelihoods`` (one per request, in choice order, for
    log-likelihood tasks; else None) and every numeric per-document metric value (one per filter;
    lm-eval's per-document inputs of corpus metrics such as f1's (gold, pred) pairs are left out)."""
    items: dict[tuple[str, int], dict[str, Any]] = {}
    for name, entries in samples.items():
        task = tasks[name]
        output_type = task.get_config('output_type')
        for entry in entries:
            record = items.setdefault((name, int(entry['doc_id'])), {
                'task': name,
                'doc_id': int(entry['doc_id']),
                'gold': gold_index(task, entry['doc']) if output_type == 'multiple_choice' else None,
                'loglikelihoods': ([float(resp[0][0]) for resp in entry['resps']]
                                   if output_type in LOGLIKELIHOOD_OUTPUTS else None),
                'metrics': {},
            })
            for metric in entry['metrics']:
                value = entry[metric]
                if isinstance(value, numbers.Number) and not isinstance(value, bool):
                    record['metrics'][metric_name(metric, entry['filter'])] = float(value)
    return [items[key] for key in sorted(items)]


def items_identity(samples: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``{task: {'n': documents, 'hash': sha256 of each document's doc/prompt/target hashes}}``:
    equal for two evaluations exactly when they scored the same documents with the same prompts."""
    identity = {}
    for name, entries in sorted(samples.items()):
        first = {int(e['doc_id']): e for e in reversed(entries)}  # one entry per document (the first filter's)
        digest = hashlib.sha256()
        for doc_id in sorted(first):
            e = first[doc_id]
            digest.update(f"{doc_id} {e['doc_hash']} {e['prompt_hash']} {e['target_hash']}\n".encode())
        identity[name] = {'n': len(first), 'hash': digest.hexdigest()}
    return identity


def requested_settings(
    tasks: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    limit: Optional[Union[int, float]],
    num_fewshot: Optional[int],
    fewshot_random_seed: int,
    mixed_precision_dtype: Optional[torch.dtype],
) -> dict[str, Any]:
    """The records settings known before an evaluation runs (the rest come from lm-eval's results)."""
    return {
        'tasks': list(tasks),
        'limit': limit,
        'num_fewshot': num_fewshot,
        'fewshot_random_seed': fewshot_random_seed,
        'autocast': None if mixed_precision_dtype is None else str(mixed_precision_dtype).removeprefix('torch.'),
        'tokenizer_hash': tokenizer_content_hash(tokenizer),
    }


def load_tasks(task_manager: TaskManager, tasks: Sequence[str]) -> tuple[list[Union[Task, Group]], dict[str, Task]]:
    """(the requested tasks/groups as lm-eval objects, for ``simple_evaluate``; every leaf task by name)."""
    top: list[Union[Task, Group]] = []
    leaves: dict[str, Task] = {}
    for name in tasks:
        loaded = task_manager.load([name])
        leaves.update(loaded['tasks'])
        if name in loaded['groups']:
            top.append(loaded['groups'][name])
        elif name in loaded['tasks']:
            top.append(loaded['tasks'][name])
        else:  # a tag: its tasks
            top.extend(loaded['tasks'].values())
    return top, leaves


@dataclasses.dataclass(frozen=True)
class LMEvalResult:
    """``metrics``: the ``flatten_metrics`` dict, on every rank. ``evaluation`` (settings, groups,
    higher_is_better, info) and ``items`` (``item_records``): on global rank 0 only, else None."""

    metrics: dict[str, float]
    evaluation: Optional[dict[str, Any]]
    items: Optional[list[dict[str, Any]]]

    def records(self, run: Mapping[str, Any], batch: int, tokens: int) -> Records:
        """The records of this evaluation of ``run`` (``run_identity``) at ``batch``/``tokens`` (rank 0)."""
        if self.evaluation is None or self.items is None:
            raise RuntimeError('Per-item records exist on global rank 0 only.')
        header = {'format': RECORDS_FORMAT, 'version': RECORDS_VERSION, 'batch': int(batch),
                  'tokens': int(tokens), 'run': dict(run), **self.evaluation}
        return Records(header=header, items=self.items)


def evaluate_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    task_manager: TaskManager,
    batch_size: int,
    limit: Optional[Union[int, float]] = None,
    num_fewshot: Optional[int] = None,
    bootstrap_iters: int = 1000,
    fewshot_random_seed: int = 1234,
    mixed_precision_dtype: Optional[torch.dtype] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> LMEvalResult:
    """Run lm-eval on ``model`` in place: the same metrics on every rank, the per-item records on rank 0.

    Collective when ``torch.distributed`` is initialised: every rank must call it with the same
    arguments. ``bootstrap_iters`` only matters for bootstrapped metrics (perplexity, f1, ...):
    ``acc``/``acc_norm`` stderr is closed form; it must be > 0 or lm-eval reports stderr as 'N/A'.
    ``should_stop`` (a collective) is asked while tokenising and before every forward batch; when
    it says stop, ``EvaluationInterrupted`` propagates, with RNG states and train modes restored.
    """
    start = time.perf_counter()
    with preserved_rng_state(), preserved_train_modes(model):
        top, leaves = load_tasks(task_manager, tasks)  # building tasks can draw from the global RNGs
        lm = ShardedHFLM(model, tokenizer, batch_size=batch_size, mixed_precision_dtype=mixed_precision_dtype,
                         should_stop=should_stop)
        results = simple_evaluate(
            model=lm,
            tasks=top,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
            fewshot_random_seed=fewshot_random_seed,
        )
    # simple_evaluate returns the results only where LOCAL_RANK == 0 (every rank computed them).
    shared = [flatten_metrics(results) if results is not None else None]
    dist.broadcast_object_list(shared, src=0)
    evaluation, items = None, None
    if dist.get_global_rank() == 0:
        settings = requested_settings(tasks, tokenizer, limit, num_fewshot, fewshot_random_seed, mixed_precision_dtype)
        settings.update(task_versions=results['versions'], n_shot=results['n-shot'],
                        items=items_identity(results['samples']))
        evaluation = {
            'settings': settings,
            'groups': {group: list(children) for group, children in results['group_subtasks'].items() if children},
            'higher_is_better': results['higher_is_better'],
            'info': {'lm_eval_version': lm_eval.__version__, 'batch_size': batch_size, 'bootstrap_iters': bootstrap_iters},
        }
        items = item_records(results['samples'], leaves)
    log.info('lm_eval: %d metrics on %s in %.1f s.', len(shared[0]), list(tasks), time.perf_counter() - start)
    return LMEvalResult(metrics=shared[0], evaluation=evaluation, items=items)
