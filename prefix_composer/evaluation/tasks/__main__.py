"""Load (and so download into the Hugging Face datasets cache) lm-eval tasks: ``python -m prefix_composer.evaluation.tasks TASK ...``."""

import sys

from prefix_composer.evaluation.tasks import build_task_manager, check_tasks

if __name__ == '__main__':
    if len(sys.argv) < 2:
        raise SystemExit('usage: python -m prefix_composer.evaluation.tasks TASK [TASK ...]')
    names = sys.argv[1:]
    for task, n_docs in check_tasks(build_task_manager(names), names).items():
        print(f'{task}: {n_docs} evaluation documents')
