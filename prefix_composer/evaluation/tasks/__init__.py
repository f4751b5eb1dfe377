"""lm-eval task resolution: the project's task folders, one ``TaskManager``, and the start-up check.

Task folders searched besides lm-eval's built-in tasks: CharBench (``evaluation/charbench/tasks``)
and this folder (``winogrande_debiased``). ``check_task_names`` checks the names against the
index alone (the start-up check, before the model is built); ``check_tasks`` builds every
requested task, which loads its data, so a dataset missing from an offline cache is a
``ValueError`` naming the task and the fix before training starts. Pre-download on a machine with internet
(same ``HF_DATASETS_CACHE`` as the cluster)::

    uv run python -m prefix_composer.evaluation.tasks hellaswag piqa winogrande_debiased arc_easy
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import datasets
import lm_eval
from lm_eval.tasks import TaskManager

from prefix_composer.evaluation.charbench import TASKS_DIR as CHARBENCH_TASKS_DIR

__all__ = ['PROJECT_TASK_DIRS', 'TASKS_DIR', 'build_task_manager', 'check_task_names', 'check_tasks']

TASKS_DIR = Path(__file__).parent
PROJECT_TASK_DIRS = (CHARBENCH_TASKS_DIR, TASKS_DIR)


def build_task_manager(tasks: Sequence[str], include_path: Sequence[str | os.PathLike] = ()) -> TaskManager:
    """A ``TaskManager`` over the project's folders, ``include_path`` and, if needed, lm-eval's tasks.

    Indexing lm-eval's thousands of built-in tasks takes seconds, so they are indexed only when a
    requested name is not found in the project's folders and ``include_path``.
    """
    paths = tuple(str(p) for p in (*PROJECT_TASK_DIRS, *include_path))
    for path in paths:
        if not os.path.isdir(path):
            raise ValueError(f'lm_eval include_path {path!r} is not a directory.')
    local = indexed_tasks(paths, include_defaults=False)
    if all(name in local.all_tasks for name in tasks):
        return local
    return indexed_tasks(paths, include_defaults=True)


@functools.cache
def indexed_tasks(paths: tuple[str, ...], include_defaults: bool) -> TaskManager:
    """One ``TaskManager`` per process and set of folders: the start-up name check (``launch.main``)
    indexes them, the lm-eval callback built later in the same process reuses the index."""
    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def check_task_names(manager: TaskManager, tasks: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``tasks`` is a non-empty list of names that ``manager`` knows (no data is loaded)."""
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f'lm_eval tasks must be a non-empty list of task names, got {tasks!r}.')
    for name in tasks:
        if name not in manager.all_tasks:
            raise ValueError(
                f'lm_eval task {name!r} is unknown to lm-eval {lm_eval.__version__} and to the task folders '
                f'{manager.include_path}. Check the spelling (`uv run lm_eval ls tasks` lists the built-in tasks), '
                'add the folder with its YAML to callbacks.lm_eval.include_path, or drop it from callbacks.lm_eval.tasks.',
            )


def check_tasks(manager: TaskManager, tasks: Sequence[str]) -> dict[str, int]:
    """Build every task (loading its documents); returns ``{leaf task: number of evaluation docs}``.

    Raises ``ValueError`` naming the task for an unknown name (``check_task_names``), data that cannot
    be loaded (offline without a cache, missing file) or a task requested twice (e.g. a group and its member).
    """
    check_task_names(manager, tasks)
    built = []
    for name in tasks:
        try:
            built.append(manager.load([name]))
        except OSError as error:  # ConnectionError (incl. OfflineModeIsEnabled), FileNotFoundError, HTTP errors
            raise ValueError(
                f'lm_eval task {name!r}: its dataset could not be loaded ({type(error).__name__}: {error}). '
                f'Offline, the dataset must already be in the Hugging Face datasets cache '
                f'(HF_DATASETS_CACHE={datasets.config.HF_DATASETS_CACHE}). Fill that cache on a machine with '
                f'internet: `HF_DATASETS_CACHE=<same path> uv run python -m prefix_composer.evaluation.tasks {name}`; '
                f'or drop {name!r} from callbacks.lm_eval.tasks.',
            ) from error
        except Exception as error:
            raise ValueError(f'lm_eval task {name!r} failed to load: {type(error).__name__}: {error}') from error
    owner: dict[str, str] = {}
    for name, one in zip(tasks, built):
        for leaf in one['tasks']:
            if leaf in owner:
                raise ValueError(
                    f'lm_eval task {leaf!r} is requested twice (in {owner[leaf]!r} and {name!r}). Request a group or '
                    'its members, not both (e.g. `charbench`, or `charbench_single` and/or `charbench_multi`).',
                )
            owner[leaf] = name
    return {name: len(task.eval_docs) for one in built for name, task in one['tasks'].items()}
