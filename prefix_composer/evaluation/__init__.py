"""Evaluation: lm-eval-harness on the live model (harness core, HFLM adapter, callback), task YAMLs, CharBench."""

from prefix_composer.evaluation.adapter import ShardedHFLM
from prefix_composer.evaluation.callback import LMEvalCallback
from prefix_composer.evaluation.harness import AUTOCAST_DTYPES, METRIC_PREFIX, evaluate_lm, flatten_metrics
from prefix_composer.evaluation.tasks import build_task_manager, check_tasks

__all__ = [
    'AUTOCAST_DTYPES',
    'METRIC_PREFIX',
    'LMEvalCallback',
    'ShardedHFLM',
    'build_task_manager',
    'check_tasks',
    'evaluate_lm',
    'flatten_metrics',
]
