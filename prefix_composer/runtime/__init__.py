"""Runtime: ``launch`` (train.py's main and its pre-flight), ``checkpoints`` (atomic saves, resume selection),
``run_folder`` (lock, writability probes), ``experiment`` (the run folder's experiment record),
``shared_memory`` (stale Streaming shared memory), ``preemption`` (SIGTERM), ``launcher``, ``multinode``.
Import the modules themselves: this package imports nothing, so ``run_folder`` stays cheap to import.
"""
