"""lm-eval-harness evaluation of the in-training model: ``evaluate_lm`` and the ``LMEvalCallback``.

YAML (registered in llm-foundry's callbacks registry as ``lm_eval``)::

    callbacks:
      lm_eval:
        tasks: [hellaswag, piqa, winogrande_debiased, arc_easy, charbench]
        interval: 500ba          # also runs once at the end of training
        limit: null              # docs per task (int) or fraction (float); null = all
        batch_size: 16           # context groups per forward batch on each rank
        num_fewshot: 0

Each evaluation runs lm-eval's ``simple_evaluate`` (its task system and metrics) on the live
Hugging Face model through ``ShardedHFLM``: under DDP every rank scores ~1/N of the forward
batches and the scores are gathered, with results identical to one process. Every numeric
metric of every task and group is logged as ``metrics/lm_eval/<task>/<metric>`` (``acc``,
``acc_stderr``, ``acc_norm``, ``acc_norm_stderr``; a filter other than lm-eval's ``none`` is
appended as ``<metric>/<filter>``); the CSV logger writes them as one row with phase ``lm_eval``.

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
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from composer.core import Callback, Event, Precision, State
from composer.loggers import Logger
from composer.utils import create_interval_scheduler, dist
from lm_eval.evaluator import simple_evaluate
from lm_eval.tasks import TaskManager
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefix_composer.lm_eval_adapter import ShardedHFLM, check_batch_size
from prefix_composer.lm_eval_tasks import build_task_manager, check_tasks

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
) -> dict[str, float]:
    """Run lm-eval on ``model`` in place; the same ``flatten_metrics`` dict on every rank.

    Collective when ``torch.distributed`` is initialised: every rank must call it with the same
    arguments. ``bootstrap_iters`` only matters for bootstrapped metrics (perplexity, f1, ...):
    ``acc``/``acc_norm`` stderr is closed form; it must be > 0 or lm-eval reports stderr as 'N/A'.
    """
    start = time.perf_counter()
    with preserved_rng_state(), preserved_train_modes(model):
        lm = ShardedHFLM(model, tokenizer, batch_size=batch_size, mixed_precision_dtype=mixed_precision_dtype)
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


def unwrap_hf_model(state: State) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The ``transformers`` model and tokenizer inside the trainer's (possibly DDP-wrapped) ``HuggingFaceModel``."""
    composer_model = state.model.module if isinstance(state.model, DistributedDataParallel) else state.model
    model, tokenizer = getattr(composer_model, 'model', None), getattr(composer_model, 'tokenizer', None)
    if not isinstance(model, PreTrainedModel) or tokenizer is None:
        raise ValueError(
            f'callbacks.lm_eval needs a Composer HuggingFaceModel with a transformers model and a tokenizer '
            f'(e.g. model.name: prefix_llama); got {type(composer_model).__name__}.',
        )
    return model, tokenizer


class LMEvalCallback(Callback):
    """Runs lm-eval every ``interval`` and at the end of training; registered as ``lm_eval``.

    The task list is resolved and every task's data loaded in ``__init__`` (before the trainer is
    built), so a bad name or missing offline data fails before batch 1 (see ``check_tasks``).

    Args:
        tasks: lm-eval task or group names (built-in, CharBench, ``winogrande_debiased``, or in ``include_path``).
        interval: Composer time string (``500ba``, ``1ep``, ``100000000tok``); an int means epochs.
        limit: documents per task (int) or fraction of them (float); ``None`` = all.
        batch_size: context groups per forward batch on each rank.
        num_fewshot: few-shot examples per prompt (tasks that fix it to 0 in their YAML keep 0).
        bootstrap_iters: bootstrap draws for bootstrapped metrics' stderr (> 0).
        fewshot_random_seed: seed of lm-eval's few-shot sampler only (not the global RNGs).
        include_path: extra folders of task YAMLs.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        interval: Union[str, int] = '500ba',
        limit: Optional[Union[int, float]] = None,
        batch_size: int = 16,
        num_fewshot: Optional[int] = 0,
        bootstrap_iters: int = 1000,
        fewshot_random_seed: int = 1234,
        include_path: Sequence[str] = (),
    ):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise ValueError(f'callbacks.lm_eval.limit must be null, a positive int or a fraction, got {limit!r}.')
        if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
            raise ValueError(f'callbacks.lm_eval.num_fewshot must be null or an int >= 0, got {num_fewshot!r}.')
        if not isinstance(bootstrap_iters, int) or bootstrap_iters < 1:
            raise ValueError(
                f'callbacks.lm_eval.bootstrap_iters must be >= 1 (0 makes lm-eval report stderr as "N/A"), '
                f'got {bootstrap_iters!r}.',
            )
        self.tasks = list(tasks) if not isinstance(tasks, str) else [tasks]
        self.should_run = create_interval_scheduler(
            interval, include_end_of_training=True, checkpoint_events=False, final_events={Event.FIT_END},
        )
        self.limit = limit
        self.batch_size = check_batch_size(batch_size)
        self.num_fewshot = num_fewshot
        self.bootstrap_iters = bootstrap_iters
        self.fewshot_random_seed = fewshot_random_seed
        start = time.perf_counter()
        self.task_manager = build_task_manager(self.tasks, include_path)
        docs = check_tasks(self.task_manager, self.tasks)
        log.info(
            'lm_eval: %d tasks ready (%d documents, limit %s) in %.1f s.',
            len(docs), sum(docs.values()), limit, time.perf_counter() - start,
        )

    def fit_start(self, state: State, logger: Logger) -> None:
        unwrap_hf_model(state)  # a model the callback cannot evaluate fails before batch 1

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        super().run_event(event, state, logger)
        if event in (Event.BATCH_END, Event.FIT_END) and self.should_run(state, event):
            self.evaluate(state, logger)

    def evaluate(self, state: State, logger: Logger) -> dict[str, float]:
        model, tokenizer = unwrap_hf_model(state)
        metrics = evaluate_lm(
            model,
            tokenizer,
            self.tasks,
            self.task_manager,
            batch_size=self.batch_size,
            limit=self.limit,
            num_fewshot=self.num_fewshot,
            bootstrap_iters=self.bootstrap_iters,
            fewshot_random_seed=self.fewshot_random_seed,
            mixed_precision_dtype=AUTOCAST_DTYPES[Precision(state.precision)],
        )
        logger.log_metrics({f'{METRIC_PREFIX}/{name}': value for name, value in metrics.items()})
        return metrics
