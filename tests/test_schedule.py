"""runtime/schedule.py: the LR schedule resolved as Composer runs it, and Composer's refusals of a
schedule brought forward to start-up."""

from __future__ import annotations

import glob
import os

import pytest

from prefix_composer.config import load_config
from prefix_composer.runtime.schedule import check_schedule, resolved_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'yamls', 'smoke_cpu.yaml')


@pytest.mark.parametrize('overrides, t_warmup, t_max', [
    ((), '4ba', '30ba'),                                           # t_max defaults to 1dur
    (('scheduler.t_max=0.5dur',), '4ba', '15ba'),
    (('max_duration=1000tok', 'scheduler.t_warmup=0.1dur'), '100tok', '1000tok'),
    (('max_duration=2ep',), '4ba', '2ep'),                         # Composer: 2 x the loader's batches
    (('scheduler.t_max=2000ba', 'max_duration=10ba'), '4ba', '2000ba'),
])
def test_resolved_schedule(overrides, t_warmup, t_max):
    assert resolved_schedule(load_config(SMOKE, list(overrides))) == {
        'name': 'cosine_with_warmup', 't_warmup': t_warmup, 't_max': t_max, 'alpha_f': 0.1, 'scale_warmup': False}


@pytest.mark.parametrize('overrides, composer_says', [
    (('max_duration=1000tok',), 't_max 1000tok with units TimeUnit.TOKEN and t_warmup 4ba with units TimeUnit.BATCH'),
    (('scheduler.t_max=20ba',), 't_max 20ba must be greater than or equal to max_duration 30ba'),
])
def test_a_schedule_composer_would_refuse_is_refused_at_start_up(overrides, composer_says):
    with pytest.raises(ValueError) as refused:
        check_schedule(load_config(SMOKE, list(overrides)))
    message = str(refused.value)
    assert message.startswith('scheduler cosine_with_warmup(') and composer_says in message
    assert 'Set scheduler.t_warmup and scheduler.t_max in one unit' in message


def test_every_yaml_schedule_runs_and_production_ones_are_absolute():
    for path in sorted(glob.glob(os.path.join(REPO, 'yamls', '*.yaml'))):
        cfg = load_config(path, [])
        check_schedule(cfg)
        if os.path.basename(path) != 'smoke_cpu.yaml':  # the same curve if max_duration changes
            assert resolved_schedule(cfg) == resolved_schedule(load_config(path, ['max_duration=1000000000tok'])), path
