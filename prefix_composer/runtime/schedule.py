"""The LR schedule as the Trainer will run it, resolved and checked before the model is built.

Composer's schedulers take durations in any unit; one in ``dur`` (a fraction ``f`` of
``max_duration``; ``cosine_with_warmup``'s ``t_max`` defaults to ``1dur``) is converted by Composer
at every step to ``int(f * max_duration)`` in ``max_duration``'s unit (for a ``max_duration`` in
epochs, to batches through the train loader's length, i.e. ``f * max_duration`` epochs).

``resolved_schedule`` is the scheduler block with every parameter of the scheduler class (its
defaults included) and each ``dur`` duration so resolved: the curve the LR follows
(``t_max=1dur`` with ``max_duration=30ba`` -> ``t_max: 30ba``). The experiment record keeps it, so
a resume that would change the LR at some batch is refused, while a ``max_duration`` change under
an absolute ``t_max`` resolves to the same curve. A duration is compared as written (value and
unit): ``3815ba`` and ``2000000000tok`` are different curves.

``check_schedule`` evaluates the scheduler once, at batch 0, on a Composer ``State`` holding this
``max_duration``, so Composer's own refusals (``t_warmup`` and ``t_max`` in different units,
``t_max`` before ``max_duration`` in the same unit) come at start-up, naming the keys.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from composer.core import State, Time, TimeUnit
from composer.devices import DeviceCPU
from llmfoundry import registry
from llmfoundry.utils.builders import build_scheduler
from omegaconf import DictConfig
from omegaconf import OmegaConf as om


def parse_duration(value: Any) -> Time | None:
    """``value`` as a Composer ``Time`` if it is a time string (``'4ba'``, ``'1dur'``), else None."""
    if not isinstance(value, str):
        return None
    try:
        return Time.from_timestring(value)
    except ValueError:
        return None


def resolve_duration(value: Any, max_duration: Time) -> Any:
    """A time string with ``dur`` resolved against ``max_duration`` as Composer does; other values as they are."""
    if isinstance(value, (list, tuple)):
        return [resolve_duration(item, max_duration) for item in value]
    time = parse_duration(value)
    if time is None:
        return value
    if time.unit != TimeUnit.DURATION:
        return f'{time.value}{time.unit.value}'
    if max_duration.unit == TimeUnit.EPOCH:
        return f'{time.value * max_duration.value:g}{TimeUnit.EPOCH.value}'
    return f'{int(time.value * max_duration.value)}{max_duration.unit.value}'


def scheduler_block(cfg: DictConfig) -> dict[str, Any]:
    return om.to_container(cfg.scheduler, resolve=True) if cfg.get('scheduler') is not None else {}


def resolved_schedule(cfg: DictConfig) -> dict[str, Any]:
    """``{name, <every parameter of the scheduler>}`` with defaults filled in and ``dur`` durations
    resolved against ``cfg.max_duration``; ``{}`` without a scheduler block."""
    block = scheduler_block(cfg)
    if not block:
        return {}
    parameters = inspect.signature(registry.schedulers.get(block['name'])).parameters.values()
    ordered = {'name': block['name']}
    ordered.update((p.name, block.get(p.name, p.default)) for p in parameters
                   if p.name in block or p.default is not inspect.Parameter.empty)
    ordered.update(block)
    max_duration = Time.from_timestring(str(cfg.max_duration))
    return {key: resolve_duration(value, max_duration) for key, value in ordered.items()}


def describe_schedule(schedule: dict[str, Any]) -> str:
    """``cosine_with_warmup(t_warmup=4ba, t_max=30ba, alpha_f=0.1, scale_warmup=False)``."""
    return f'{schedule.get("name")}(' + ', '.join(f'{k}={v}' for k, v in schedule.items() if k != 'name') + ')'


def check_schedule(cfg: DictConfig) -> None:
    """Build the scheduler and evaluate it at batch 0 with ``cfg.max_duration``; a refusal names the
    scheduler keys. A ``max_duration`` in epochs needs the train loader's length: Composer checks it
    when the Trainer is built."""
    block = scheduler_block(cfg)
    if not block or Time.from_timestring(str(cfg.max_duration)).unit == TimeUnit.EPOCH:
        return
    kwargs = {k: v for k, v in block.items() if k != 'name'}
    try:
        scheduler = build_scheduler(block['name'], kwargs)
        scheduler(State(model=torch.nn.Module(), rank_zero_seed=0, run_name='schedule_check', device=DeviceCPU(),
                        max_duration=str(cfg.max_duration)))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f'scheduler {describe_schedule(block)} cannot run with max_duration={cfg.max_duration}: '
            f'{e} Set scheduler.t_warmup and scheduler.t_max in one unit (max_duration\'s, so that Composer can '
            f'check that t_max covers it) with scheduler.t_max >= max_duration.',
        ) from e
