"""The ``algorithms.prefix_smoothing`` block read into an ``ObjectiveSpec``, with ``eps`` as a number or a
schedule of Composer time strings, and the trainer's time that a schedule is evaluated at.

``eps: {schedule: ptp, value: 0.2, t1: 0.333dur, t2: 0.667dur}``: the times are parsed with
Composer's ``Time.from_timestring``; the schedule's math and checks are ``objectives.schedule``.
"""

from __future__ import annotations

from typing import Any, Mapping

from composer.core import State, Time

from prefix_composer.objectives.schedule import EPS_KEY, EpsSchedule
from prefix_composer.objectives.targets import ObjectiveSpec

SCHEDULE_KEYS = ('schedule', 'value', 't1', 't2')


def parse_time(name: str, raw: Any) -> tuple[float, str]:
    """A Composer time string (``0.333dur``, ``500ba``, ``100000000tok``) as ``(amount, unit)``."""
    try:
        if not isinstance(raw, str):
            raise ValueError(raw)
        time = Time.from_timestring(raw)
    except (ValueError, TypeError):
        raise ValueError(f'{EPS_KEY}.{name}={raw!r} is not a Composer time with a unit; write e.g. 0.5dur (a fraction '
                         'of max_duration), 1000ba (batches) or 1000000000tok (tokens).') from None
    return time.value, time.unit.value


def parse_eps(raw: Any) -> Any:
    """``eps`` as the YAML gives it: a mapping becomes an ``EpsSchedule``; anything else is left to ``ObjectiveSpec``."""
    if not isinstance(raw, Mapping):
        return raw
    unknown = [str(key) for key in raw if key not in SCHEDULE_KEYS]
    if unknown:
        raise ValueError(f'{EPS_KEY}: unknown keys {unknown} in the schedule; it takes {", ".join(SCHEDULE_KEYS)}.')
    if 'schedule' not in raw or 'value' not in raw:
        raise ValueError(f'{EPS_KEY} as a schedule needs schedule and value, e.g. '
                         '{schedule: ptp, value: 0.2, t1: 0.333dur, t2: 0.667dur}; got ' f'{dict(raw)!r}.')
    times = {name: parse_time(name, raw[name]) for name in ('t1', 't2') if raw.get(name) is not None}
    return EpsSchedule(schedule=raw['schedule'], value=raw['value'], **times)


def objective_spec(objective: str = 'ce', eps: Any = None, tau: Any = None, support: Any = None) -> ObjectiveSpec:
    """The ``ObjectiveSpec`` of an ``algorithms.prefix_smoothing`` block (omitted parameters ``None``)."""
    return ObjectiveSpec(objective=objective, eps=parse_eps(eps), tau=tau, support=support)


def elapsed(state: State) -> dict[str, float]:
    """The training time before the current batch, in each unit a schedule may use: ``ba`` and ``tok`` (the
    timestamp) and, when the trainer has a ``max_duration``, ``dur`` (Composer's ``get_elapsed_duration``)."""
    out = {'ba': int(state.timestamp.batch), 'tok': int(state.timestamp.token)}
    duration = state.get_elapsed_duration()
    if duration is not None:
        out['dur'] = float(duration.value)
    return out
