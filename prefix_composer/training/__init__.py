"""Composer glue: the ``ComposerModel``, the ``PrefixSmoothing`` algorithm and the CSV logger."""

from prefix_composer.training.algorithm import PrefixSmoothing
from prefix_composer.training.csv_logger import CSVLogger
from prefix_composer.objectives.labels import next_token_labels, one_hot_targets
from prefix_composer.training.model import PrefixLlamaForCausalLM
from prefix_composer.training.param_count import ParamCount, count_llama_parameters

__all__ = [
    'CSVLogger',
    'ParamCount',
    'PrefixLlamaForCausalLM',
    'PrefixSmoothing',
    'count_llama_parameters',
    'next_token_labels',
    'one_hot_targets',
]
