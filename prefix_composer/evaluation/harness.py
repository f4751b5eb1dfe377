"""lm-eval-harness on a live model, in place: ``evaluate_lm`` and the state it must leave untouched.

``evaluate_lm`` runs lm-eval's ``simple_evaluate`` (its task system and metrics) on the live
Hugging Face model through ``ShardedHFLM``: under DDP every rank scores ~1/N of the forward
batches and the scores are gathered, with results identical to one process. Every numeric
metric of every task and group is returned as ``<task>/<metric>`` (``acc``, ``acc_stderr``,
``acc_norm``, ``acc_norm_stderr``; a filter other than lm-eval's ``none`` is appended as
``<metric>/<filter>``).

Side effects undone: lm-eval's global reseeding is switched off (``random_seed=None`` ...) and
the Python/numpy/torch/CUDA RNG states are restored anyway, so training after an evaluation is
bit-identical to training without one; every module's train/eval mode is restored
(``HFLM`` leaves the model in eval mode). The model is evaluated in place: never copied,
moved or cast (the trainer's AMP precision is applied as autocast).
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import random
import time
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from composer.core import Precision
from composer.utils import dist
from lm_eval.evaluator import simple_evaluate
from lm_eval.tasks import TaskManager
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefix_composer.evaluation.adapter import ShardedHFLM

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
                metric, filter_name = key.split(',', 1)
                name = metric if filter_name == 'none' else f'{metric}/{filter_name}'
                metrics[f'{task}/{name}'] = float(value)
    return metrics


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
) -> dict[str, float]:
    """Run lm-eval on ``model`` in place; the same ``flatten_metrics`` dict on every rank.

    Collective when ``torch.distributed`` is initialised: every rank must call it with the same
    arguments. ``bootstrap_iters`` only matters for bootstrapped metrics (perplexity, f1, ...):
    ``acc``/``acc_norm`` stderr is closed form; it must be > 0 or lm-eval reports stderr as 'N/A'.
    ``should_stop`` (a collective) is asked while tokenising and before every forward batch; when
    it says stop, ``EvaluationInterrupted`` propagates, with RNG states and train modes restored.
    """
    start = time.perf_counter()
    with preserved_rng_state(), preserved_train_modes(model):
        lm = ShardedHFLM(model, tokenizer, batch_size=batch_size, mixed_precision_dtype=mixed_precision_dtype,
                         should_stop=should_stop)
        results = simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
            fewshot_random_seed=fewshot_random_seed,
        )
    # simple_evaluate returns the results only where LOCAL_RANK == 0 (every rank computed them).
    shared = [flatten_metrics(results) if results is not None else None]
    dist.broadcast_object_list(shared, src=0)
    log.info('lm_eval: %d metrics on %s in %.1f s.', len(shared[0]), list(tasks), time.perf_counter() - start)
    return shared[0]
