"""The ``lm_eval`` callback: ``evaluate_lm`` every ``interval`` of training and at its end.

YAML (registered in llm-foundry's callbacks registry as ``lm_eval``)::

    callbacks:
      lm_eval:
        tasks: [hellaswag, piqa, winogrande_debiased, arc_easy, charbench]
        interval: 500ba          # also runs once at the end of training
        limit: null              # docs per task (int) or fraction (float); null = all
        batch_size: 16           # context groups per forward batch on each rank
        num_fewshot: 0
        # records_dir: null      per-item records; null = <parent of save_folder>/lm_eval

Every metric is logged as ``metrics/lm_eval/<task>/<metric>``; the CSV logger writes them as one
row with phase ``lm_eval``. What lm-eval computed per document goes to one records file per
evaluation, ``<records_dir>/ba<batch>.jsonl.gz`` (``records.py``), written by global rank 0 after
the gather; at the start of a resumed run the records of evaluations past the resumed batch are
deleted (the rule of ``metrics.csv``), so a re-run evaluation replaces them and none is duplicated.
See ``harness.py`` for what an evaluation leaves untouched.

Preemption: ``graceful_preemption`` calls ``stop_when``; an evaluation then stops before its next
forward batch once all ranks agree to stop, logs nothing, and records its batch in the callback's
checkpoint state (the checkpoint of that very batch is saved next, at ``BATCH_CHECKPOINT``). After
the restart the evaluation of that batch runs again at ``FIT_START``, before any training.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from composer.callbacks import CheckpointSaver
from composer.core import Callback, Event, Precision, State
from composer.loggers import Logger
from composer.utils import create_interval_scheduler, dist, format_name_with_dist
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefix_composer.constants import is_number
from prefix_composer.evaluation.adapter import EvaluationInterrupted, check_batch_size
from prefix_composer.evaluation.harness import AUTOCAST_DTYPES, METRIC_PREFIX, LMEvalResult, evaluate_lm, preserved_train_modes
from prefix_composer.evaluation.prefix_recovery import RecoveryPlan, recovery_plan, recovery_records, recovery_settings
from prefix_composer.evaluation.records import (
    RECORDS_SUBDIR,
    Records,
    default_records_folder,
    records_path,
    remove_records_after,
    run_identity,
    write_records,
)
from prefix_composer.evaluation.records import records_folder as kind_records_folder
from prefix_composer.evaluation.spelling_probes import macro_accuracy, probe_records, probe_settings
from prefix_composer.evaluation.tasks import build_task_manager, check_task_names, check_tasks
from prefix_composer.objectives import token_byte_strings
from prefix_composer.tokenizer import tokenizer_content_hash
from prefix_composer.training.algorithm import PrefixSmoothing
from prefix_composer.training.stochastok import StochasTok

log = logging.getLogger(__name__)


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


def records_folder(state: State, records_dir: Optional[str], callback: str = 'lm_eval', kind: str = RECORDS_SUBDIR) -> str:
    """``records_dir`` (``{run_name}`` formatted), else ``<parent of the trainer's save_folder>/<kind>``
    (``callback``: the callback's YAML name, for the error)."""
    if records_dir is not None:
        return format_name_with_dist(records_dir, state.run_name)
    savers = [saver for saver in state.callbacks if isinstance(saver, CheckpointSaver)]
    if not savers or savers[0].remote_uploader is not None:
        raise ValueError(
            f'callbacks.{callback} writes per-item records next to the checkpoints (<save_folder>/../{kind}), but this run '
            f'has {"a remote save_folder" if savers else "no save_folder"}. Set callbacks.{callback}.records_dir to a '
            f'local or mounted folder (e.g. ${{variables.run_root}}/${{run_name}}/{kind}).',
        )
    return default_records_folder(format_name_with_dist(savers[0].folder, state.run_name), kind)


def state_run_identity(state: State) -> dict[str, Any]:
    """``run_identity`` of the training run: its name, seed, model config, ``PrefixSmoothing`` objective and StochasTok."""
    model, _ = unwrap_hf_model(state)
    objectives = [algorithm.spec for algorithm in state.algorithms if isinstance(algorithm, PrefixSmoothing)]
    augmentation = {'stochastok': {'expand_prop': a.expand_prop} for a in state.algorithms if isinstance(a, StochasTok)}
    return run_identity(state.run_name, state.rank_zero_seed, model.config.to_dict(),
                        objectives[0].to_config(complete=True) if objectives else None, augmentation or None)


def eval_split(state: State) -> Any:
    """The dataset of the run's ``eval`` evaluator (llm-foundry's ``eval_loader``), where the recovery's
    positions come from; ``ValueError`` without one."""
    evaluators = [e for e in state.evaluators if e.label == 'eval']
    if not evaluators:
        raise ValueError('callbacks.lm_eval.recovery draws its positions from the eval_loader split, but the run has '
                         'no eval_loader (evaluator "eval"); add one or set callbacks.lm_eval.recovery: null.')
    return evaluators[0].dataloader.dataloader.dataset


def check_limit(limit: Any) -> None:
    if limit is not None and not (is_number(limit) and limit > 0):
        raise ValueError(f'callbacks.lm_eval.limit must be null, a positive int or a fraction, got {limit!r}.')


def check_lm_eval_config(block: Mapping[str, Any]) -> None:
    """The ``limit`` and task names of the YAML's ``callbacks.lm_eval`` block, checked in seconds by
    ``launch.main`` before the tokenizer and the model are built (the callback itself is built after
    them, and also loads every task's documents)."""
    check_limit(block.get('limit'))
    tasks = block.get('tasks')
    check_task_names(build_task_manager(tasks or [], block.get('include_path') or ()), tasks)


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
        records_dir: folder of the per-item records files (``{run_name}`` is formatted); default
            ``<parent of save_folder>/lm_eval``, i.e. ``<run_root>/<run_name>/lm_eval`` in the YAMLs.
        probes: settings of the spelling probes of the token embeddings (``spelling_probes.py``:
            ``max_tokens``, ``folds``, ``seed``, ``max_iter``; ``{}`` = defaults), run on global rank 0 at
            every evaluation and at the start of a fresh run (batch 0, the untrained baseline) into
            ``probes/`` beside ``records_dir``; null = off.
        recovery: settings of the prefix-path recovery (``prefix_recovery.py``: ``positions``, ``context``,
            ``seed``, ``batch_size``; ``{}`` = defaults) on positions of the ``eval`` evaluator's split,
            run on global rank 0 at every evaluation into ``recovery/`` beside ``records_dir``; null = off.

    Its ``state_dict`` (saved in every checkpoint) is the run identity of the records header, so
    ``scripts/eval_checkpoint.py`` writes the same header for a checkpoint.
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
        records_dir: Optional[str] = None,
        probes: Optional[dict[str, Any]] = None,
        recovery: Optional[dict[str, Any]] = None,
    ):
        check_limit(limit)
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
        self.records_dir = records_dir
        self.probes = None if probes is None else probe_settings(probes)
        self.recovery = None if recovery is None else recovery_settings(recovery)
        self.probe_untrained: Optional[dict[str, float]] = None  # checkpointed: batch 0's macro accuracies
        # What the probes and the recovery need of the vocabulary and the eval split, derived once (rank 0, fit start).
        self.vocab: Optional[tuple[list[bytes], set[int]]] = None
        self.tokenizer_hash: Optional[str] = None
        self.recovery_plan: Optional[RecoveryPlan] = None
        self.folder: Optional[str] = None
        self.run: Optional[dict[str, Any]] = None
        start = time.perf_counter()
        self.task_manager = build_task_manager(self.tasks, include_path)
        docs = check_tasks(self.task_manager, self.tasks)
        log.info(
            'lm_eval: %d tasks ready (%d documents, limit %s) in %.1f s.',
            len(docs), sum(docs.values()), limit, time.perf_counter() - start,
        )
        self.stop_agreed: Optional[Callable[[State], bool]] = None
        self.interrupted_batch: Optional[int] = None  # checkpointed: an evaluation preemption cut short

    def stop_when(self, agreed: Callable[[State], bool]) -> None:
        """Ask the collective ``agreed(state)`` before every forward batch; True stops the evaluation."""
        self.stop_agreed = agreed

    def fit_start(self, state: State, logger: Logger) -> None:
        """Before batch 1: the model can be evaluated, the records folder is known, and records past
        the resumed batch (a preempted run's evaluations after its last checkpoint) are deleted."""
        self.run = state_run_identity(state)  # a model the callback cannot evaluate fails here
        self.folder = records_folder(state, self.records_dir)
        if dist.get_global_rank() == 0:
            for folder in (self.folder, *self.measurement_folders().values()):
                removed = remove_records_after(folder, int(state.timestamp.batch))
                if removed:
                    log.info('lm_eval: removed %d records files past the resumed batch %d: %s.',
                             len(removed), int(state.timestamp.batch), removed)
            if self.probes is not None or self.recovery is not None:
                _, tokenizer = unwrap_hf_model(state)
                self.vocab, self.tokenizer_hash = token_byte_strings(tokenizer), tokenizer_content_hash(tokenizer)
            if self.recovery is not None:
                self.recovery_plan = recovery_plan(eval_split(state), *self.vocab, self.recovery)
            if self.probes is not None and int(state.timestamp.batch) == 0:
                self.probe_untrained = macro_accuracy(self.write_probes(state).items)
        if self.interrupted_batch is not None:
            log.info('lm_eval: running the evaluation of batch %d again (preempted while it ran).', self.interrupted_batch)
            self.evaluate_unless_preempted(state, logger)

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        super().run_event(event, state, logger)
        if event in (Event.BATCH_END, Event.FIT_END) and self.should_run(state, event):
            self.evaluate_unless_preempted(state, logger)

    def evaluate_unless_preempted(self, state: State, logger: Logger) -> None:
        """``evaluate``; if preemption stops it, remember its batch (checkpointed) to run it after the restart."""
        batch = int(state.timestamp.batch)
        try:
            self.evaluate(state, logger)
        except EvaluationInterrupted as interrupted:
            self.interrupted_batch = batch
            log.warning('lm_eval at batch %d: preempted, %s; it runs again after the restart.', batch, interrupted)
            return
        self.interrupted_batch = None

    def evaluate(self, state: State, logger: Logger) -> LMEvalResult:
        model, tokenizer = unwrap_hf_model(state)
        result = evaluate_lm(
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
            should_stop=None if self.stop_agreed is None else lambda: self.stop_agreed(state),
        )
        logger.log_metrics({f'{METRIC_PREFIX}/{name}': value for name, value in result.metrics.items()})
        if dist.get_global_rank() == 0:
            batch = int(state.timestamp.batch)
            path = records_path(self.folder, batch)
            write_records(path, result.records(self.run, batch, int(state.timestamp.token)))
            log.info('lm_eval: %d per-item records in %s.', len(result.items), path)
            if self.probes is not None:
                self.write_probes(state)
            if self.recovery is not None:
                self.write_recovery(state)
        return result

    def measurement_folders(self) -> dict[str, str]:
        """``{kind: folder}`` of the measurements this callback writes beside its lm-eval records."""
        kinds = [kind for kind, on in (('probes', self.probes), ('recovery', self.recovery)) if on is not None]
        return {kind: kind_records_folder(os.path.dirname(self.folder), kind) for kind in kinds}

    def write_recovery(self, state: State) -> Records:
        """The prefix-path recovery records of the current model on the ``eval`` split (global rank 0)."""
        start = time.perf_counter()
        model, tokenizer = unwrap_hf_model(state)
        batch = int(state.timestamp.batch)
        with preserved_train_modes(model):
            model.eval()
            records = recovery_records(model, tokenizer, eval_split(state), self.recovery_plan, self.recovery, self.run,
                                       batch, int(state.timestamp.token), self.tokenizer_hash,
                                       AUTOCAST_DTYPES[Precision(state.precision)])
        path = records_path(self.measurement_folders()['recovery'], batch)
        write_records(path, records)
        log.info('lm_eval: prefix-path recovery of %d positions in %.1f s: %s.', len(records.items),
                 time.perf_counter() - start, path)
        return records

    def write_probes(self, state: State) -> Records:
        """The spelling-probe records of the current embedding (global rank 0)."""
        start = time.perf_counter()
        model, _ = unwrap_hf_model(state)
        batch = int(state.timestamp.batch)
        records = probe_records(model.get_input_embeddings().weight, *self.vocab, self.probes, self.run, batch,
                                int(state.timestamp.token), self.probe_untrained if batch else None, self.tokenizer_hash)
        path = records_path(self.measurement_folders()['probes'], batch)
        write_records(path, records)
        log.info('lm_eval: spelling probes %s in %.1f s: %s.', macro_accuracy(records.items),
                 time.perf_counter() - start, path)
        return records

    def state_dict(self) -> dict[str, Any]:
        return {'run': self.run, 'interrupted_batch': self.interrupted_batch, 'probe_untrained': self.probe_untrained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.interrupted_batch = state.get('interrupted_batch')  # absent in checkpoints from before this state existed
        self.probe_untrained = state.get('probe_untrained')
