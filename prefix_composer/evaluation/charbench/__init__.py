"""CharBench: multiple-choice, log-likelihood probes of character-level knowledge (see README.md)."""

from pathlib import Path

__all__ = ['TASKS_DIR']

TASKS_DIR = Path(__file__).parent / 'tasks'
"""Pass as ``lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR))``; groups ``charbench``,
``charbench_single`` and ``charbench_multi``."""
