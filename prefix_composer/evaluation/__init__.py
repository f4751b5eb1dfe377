"""Evaluation: lm-eval-harness on the live model and its per-item records, task YAMLs, CharBench.

``harness`` (``evaluate_lm``), ``adapter`` (``ShardedHFLM``), ``callback`` (``LMEvalCallback``,
registered as ``lm_eval``), ``records`` (per-item records files; standard library only, so the
analysis scripts read them without importing lm-eval), ``tasks``, ``charbench``. Import the
modules themselves: this package imports nothing, so reading records stays cheap.
"""
