"""Start-up checks and their messages: durations that cannot work (``runtime/config_checks.check_durations``),
a damaged or deleted experiment record (``runtime/experiment.check_experiment``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from prefix_composer.config import load_config
from prefix_composer.runtime import launch
from prefix_composer.runtime.config_checks import check_durations
from prefix_composer.runtime.experiment import RECORD_NAME, check_experiment

from lm_eval_helpers import load_script

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / 'yamls' / 'smoke_cpu.yaml')
DURATION_REFUSALS = load_script('bad_inputs_table').DURATION_REFUSALS  # the cases' owner (docs/bad_inputs.md)


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


# -- the experiment record: damaged or deleted -------------------------------------------------
def record_folder(tmp_path, tiny_mds, record_text=None):
    cfg = load_config(SMOKE, [f'variables.run_root={tmp_path}', f'variables.data.mds_dir={tiny_mds}'])
    folder = tmp_path / 'checkpoints'
    folder.mkdir()
    if record_text is not None:
        (folder / RECORD_NAME).write_text(record_text)
    return cfg, folder


def test_a_damaged_experiment_record_says_how_to_proceed_without_options_train_lacks(tmp_path, tiny_mds):
    cfg, folder = record_folder(tmp_path, tiny_mds, '{"experiment": {"seed": 1')
    with pytest.raises(ValueError) as error:
        check_experiment(cfg, str(folder), resuming=True)
    message = str(error.value)
    assert message.startswith(f'experiment record {folder / RECORD_NAME} is not valid JSON (')
    assert message.endswith('; it holds the experiment the checkpoints beside it were trained with. Restore it from a '
                            'copy to keep that check, or delete it to resume without it (this run\'s config is then '
                            'recorded as the experiment).')
    assert '--overwrite' not in message


def test_a_deleted_experiment_record_is_called_missing_with_what_that_means(tmp_path, tiny_mds, caplog):
    cfg, folder = record_folder(tmp_path, tiny_mds)
    with caplog.at_level(logging.WARNING, logger='prefix_composer'):
        check_experiment(cfg, str(folder), resuming=True)
    assert f'{folder} has checkpoints but no {RECORD_NAME}: the experiment record was deleted' in caplog.text
    assert 'start a new run folder with run_name=<new name>' in caplog.text
    assert 'made before experiment records' not in caplog.text
    assert (folder / RECORD_NAME).exists()


# -- lm-eval task names and limit, before the tokenizer and the model ----------------------
LM_EVAL_REFUSALS = [  # (overrides of yamls/smoke_cpu.yaml, message fragment)
    (['callbacks.lm_eval.tasks=[charbenchh]'], "lm_eval task 'charbenchh' is unknown to lm-eval"),
    (['callbacks.lm_eval.tasks=[hellaswagg]'], "lm_eval task 'hellaswagg' is unknown to lm-eval"),
    (['callbacks.lm_eval.limit=-1'], 'callbacks.lm_eval.limit must be null, a positive int or a fraction, got -1.'),
    (['callbacks.lm_eval.limit=0'], 'callbacks.lm_eval.limit must be null, a positive int or a fraction, got 0.'),
]


@pytest.mark.parametrize('overrides, message', LM_EVAL_REFUSALS)
def test_lm_eval_task_and_limit_are_refused_before_anything_is_built(overrides, message, tmp_path, monkeypatch):
    monkeypatch.setattr(launch.dist, 'initialize_dist', lambda *a, **k: pytest.fail('got past the start-up checks'))
    monkeypatch.setattr(launch, 'build_tokenizer', lambda *a, **k: pytest.fail('built the tokenizer'))
    with pytest.raises(ValueError) as error:
        launch.main([SMOKE, *overrides, f'variables.run_root={tmp_path}'])
    assert message in str(error.value)
    assert not list(tmp_path.iterdir())
