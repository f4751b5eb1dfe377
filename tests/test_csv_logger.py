"""``metrics.csv`` across a crash: rows past the resumed batch and a torn last row are dropped on resume."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pandas as pd
import pytest

from prefix_composer.training.csv_logger import CSVLogger

HEADER = 'batch,tokens,wall_time_s,phase,loss/train/total\r\n'
ROWS = ['10,5120,1.5,train,2.25\r\n', '11,5632,1.7,train,2.125\r\n', '12,6144,1.9,train,2.0\r\n']


def resumed_logger(path, batch: int) -> CSVLogger:
    logger = CSVLogger(path=str(path))
    logger.path = str(path)
    logger.fit_start(SimpleNamespace(timestamp=SimpleNamespace(batch=batch)), None)
    return logger


@pytest.mark.parametrize('torn', ['13,6656,2.1,train,1.9', '1'], ids=['cut_in_a_value', 'cut_in_the_batch_number'])
def test_a_torn_last_row_is_dropped_and_logged_on_resume(tmp_path, caplog, torn):
    """The killed run was writing the row of batch 13: cut inside the loss (``1.9`` of ``1.875``), or
    inside the batch number (``1`` of ``13``, a bogus batch-1 row pandas would read)."""
    path = tmp_path / 'metrics.csv'
    path.write_text(HEADER + ''.join(ROWS) + torn, newline='')
    with caplog.at_level(logging.WARNING, logger='prefix_composer'):
        resumed_logger(path, batch=20)
    frame = pd.read_csv(path)
    assert frame['batch'].tolist() == [10, 11, 12]
    assert frame['loss/train/total'].tolist() == [2.25, 2.125, 2.0]
    assert f"dropped its last row {torn!r}: not a complete record" in caplog.text
    assert open(path, newline='').read() == HEADER + ''.join(ROWS)


def test_complete_rows_are_kept_up_to_the_resumed_batch_without_warning(tmp_path, caplog):
    path = tmp_path / 'metrics.csv'
    path.write_text(HEADER + ''.join(ROWS), newline='')
    with caplog.at_level(logging.WARNING, logger='prefix_composer'):
        resumed_logger(path, batch=11)
    assert pd.read_csv(path)['batch'].tolist() == [10, 11]
    assert not caplog.records
