"""Start-up refusals of durations that cannot work (``runtime/config_checks.check_durations``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from prefix_composer.config import load_config
from prefix_composer.runtime import launch
from prefix_composer.runtime.config_checks import check_durations

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / 'yamls' / 'smoke_cpu.yaml')

DURATION_REFUSALS = [  # (override of yamls/smoke_cpu.yaml, message fragment)
    ('save_interval=0ba', 'save_interval=0ba never saves a checkpoint'),
    ('save_interval=0ep', 'save_interval=0ep never saves a checkpoint'),
    ('save_interval=0.0dur', 'save_interval=0.0dur never saves a checkpoint'),
    ('save_interval=-5ba', 'save_interval=-5ba never saves a checkpoint'),
    ('save_interval=0', 'save_interval=0 never saves a checkpoint'),
    ('save_interval=often', "save_interval='often' is not a Composer duration"),
    ('max_duration=0ba', 'max_duration=0ba trains nothing. Set max_duration to the length of the run'),
    ('max_duration=0tok', 'max_duration=0tok trains nothing'),
]


@pytest.mark.parametrize('override, message', DURATION_REFUSALS)
def test_duration_that_cannot_work_is_refused(override, message):
    with pytest.raises(ValueError) as error:
        check_durations(load_config(SMOKE, [override]))
    assert message in str(error.value)
    assert 'reset_time' not in str(error.value)
    if override.startswith('save_interval'):
        assert 'e.g. save_interval=500ba' in str(error.value)


def test_save_interval_0_is_refused_by_train_before_anything_is_built(tmp_path, monkeypatch):
    """``composer train.py``'s main refuses it before the process group, the pre-flight and the model."""
    monkeypatch.setattr(launch.dist, 'initialize_dist', lambda *a, **k: pytest.fail('got past the start-up checks'))
    with pytest.raises(ValueError, match='save_interval=0ba never saves a checkpoint'):
        launch.main([SMOKE, 'save_interval=0ba', f'variables.run_root={tmp_path}'])
    assert not list(tmp_path.iterdir())


def test_positive_intervals_pass_and_one_longer_than_the_run_is_warned_about(caplog):
    for override in ('save_interval=1ba', 'save_interval=30ba', 'save_interval=0.5dur', 'save_interval=1ep'):
        check_durations(load_config(SMOKE, [override]))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger='prefix_composer'):
        check_durations(load_config(SMOKE, ['save_interval=31ba']))
    assert 'save_interval=31ba is longer than max_duration=30ba' in caplog.text


def test_save_interval_is_not_checked_without_save_folder():
    check_durations(load_config(SMOKE, ['save_interval=0ba', 'save_folder=null']))
