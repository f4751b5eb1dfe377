"""The objectives' math: vocabulary bytes, objective specs and their sparse target tables (no Composer)."""

from prefix_composer.objectives.schedule import EpsSchedule
from prefix_composer.objectives.targets import (
    OBJECTIVES,
    SUPPORTS,
    ObjectiveSpec,
    SparseTargets,
    TargetTable,
    build_target_table,
    prefix_indicator_table,
    strict_prefix_ids,
)
from prefix_composer.objectives.vocab import special_token_ids, token_byte_strings

__all__ = [
    'EpsSchedule',
    'OBJECTIVES',
    'SUPPORTS',
    'ObjectiveSpec',
    'SparseTargets',
    'TargetTable',
    'build_target_table',
    'prefix_indicator_table',
    'special_token_ids',
    'strict_prefix_ids',
    'token_byte_strings',
]
