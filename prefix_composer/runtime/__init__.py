"""Runtime: the ``train.py`` main with its pre-flight, atomic checkpoints, graceful preemption, the launcher."""

from prefix_composer.runtime.checkpoints import AtomicCheckpointSaver, prepare_autoresume, select_resume_checkpoint
from prefix_composer.runtime.launch import main, preflight
from prefix_composer.runtime.preemption import GracefulPreemption

__all__ = ['AtomicCheckpointSaver', 'GracefulPreemption', 'main', 'preflight', 'prepare_autoresume', 'select_resume_checkpoint']
