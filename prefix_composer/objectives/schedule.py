"""The smoothing mass over training time: an ``eps`` schedule (the math and its checks; no Composer).

A schedule has a ``value`` in [0, 1] and up to two times ``t1 <= t2`` in one of Composer's units
(``dur``: the fraction of ``max_duration`` trained, in [0, 1]; ``ba``: batches; ``tok``: tokens).
With ``t`` the training time before the batch (0 for the first batch):

=========  ===================================================================================
constant   eps_t = value
linear     eps_t = value·(1 - t/t2) for t < t2, 0 after (linear decay from the start; t2 default 1dur)
ptp        eps_t = value for t <= t1, value·(t2 - t)/(t2 - t1) for t1 < t < t2, 0 for t >= t2
=========  ===================================================================================

``ptp`` is the shape of modded-nanogpt's prefix-token-prediction weight (constant for the first
third, linear to 0 over the second). Every shape is largest at t = 0, where it is ``value``, and
lies in [0, value] throughout. Times are ``(amount, unit)`` pairs; ``training.eps_schedule``
parses them from Composer time strings (``0.333dur``, ``500ba``, ``100000000tok``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional

from prefix_composer.constants import is_number

EPS_KEY = 'algorithms.prefix_smoothing.eps'
SCHEDULES = ('constant', 'linear', 'ptp')
UNITS = ('dur', 'ba', 'tok')
# The times each schedule takes: (required, optional with its default).
SCHEDULE_TIMES: dict[str, tuple[tuple[str, ...], dict[str, tuple[float, str]]]] = {
    'constant': ((), {}),
    'linear': ((), {'t2': (1.0, 'dur')}),
    'ptp': (('t1', 't2'), {}),
}
Duration = tuple[float, str]  # (amount, unit)


def time_string(time: Duration) -> str:
    """``(0.333, 'dur')`` -> ``'0.333dur'`` (Composer's spelling)."""
    amount, unit = time
    return f'{amount!r}{unit}'


@dataclasses.dataclass(frozen=True)
class EpsSchedule:
    """``eps`` as a function of training time (module docstring), validated on construction: a known
    schedule, ``value`` a number in [0, 1], exactly the times the schedule takes, each in ``dur``
    (<= 1), ``ba`` or ``tok`` and >= 0, and ``t1 <= t2`` in one unit. Errors name ``EPS_KEY``."""

    schedule: str
    value: float
    t1: Optional[Duration] = None
    t2: Optional[Duration] = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f'{EPS_KEY}.schedule: unknown schedule {self.schedule!r}; choose one of {", ".join(SCHEDULES)}.')
        if not (is_number(self.value) and 0.0 <= self.value <= 1.0):
            raise ValueError(f'{EPS_KEY}.value must be a number in [0, 1] (the largest eps of the schedule), got {self.value!r}.')
        required, optional = SCHEDULE_TIMES[self.schedule]
        for name in ('t1', 't2'):
            time = getattr(self, name)
            if time is None and name in optional:
                object.__setattr__(self, name, optional[name])
            elif time is None and name in required:
                raise ValueError(f'{EPS_KEY}.{name} is missing: schedule {self.schedule!r} takes '
                                 f'{", ".join(required + tuple(optional))} (e.g. {name}: 0.5dur).')
            elif time is not None and name not in required and name not in optional:
                raise ValueError(f'{EPS_KEY}.{name}={time_string(time)} has no effect on schedule {self.schedule!r}; remove it.')
            elif time is not None:
                self._check_time(name, time)
        if self.t1 is not None and self.t2 is not None:
            if self.t1[1] != self.t2[1]:
                raise ValueError(f'{EPS_KEY}: t1={time_string(self.t1)} and t2={time_string(self.t2)} must be in the same unit.')
            if self.t2[0] < self.t1[0]:
                raise ValueError(f'{EPS_KEY}: t2={time_string(self.t2)} is before t1={time_string(self.t1)}; '
                                 'the decay ends at t2, so set t2 >= t1.')

    @staticmethod
    def _check_time(name: str, time: Duration) -> None:
        amount, unit = time
        if unit not in UNITS:
            raise ValueError(f'{EPS_KEY}.{name}={time_string(time)}: unit {unit!r} is not allowed; use '
                             f'{", ".join(UNITS)} (e.g. 0.5dur, 1000ba, 1000000000tok).')
        if not (is_number(amount) and math.isfinite(amount) and amount >= 0):
            raise ValueError(f'{EPS_KEY}.{name}={time_string(time)} must be >= 0.')
        if unit == 'dur' and amount > 1:
            raise ValueError(f'{EPS_KEY}.{name}={time_string(time)}: a dur time is a fraction of max_duration, in [0, 1].')

    @property
    def peak(self) -> float:
        """The largest eps of the schedule (at t = 0)."""
        return float(self.value)

    def at(self, elapsed: Mapping[str, float]) -> float:
        """eps at the training time ``elapsed`` (``{unit: time trained}`` for at least the schedule's unit)."""
        if self.schedule == 'constant':
            return float(self.value)
        t1 = 0.0 if self.schedule == 'linear' else self.t1[0]
        t2, unit = self.t2
        if unit not in elapsed:
            raise ValueError(f'{EPS_KEY}: a schedule in {unit} needs the trainer\'s max_duration.')
        t = float(elapsed[unit])
        if t <= t1:
            return float(self.value)
        if t >= t2:
            return 0.0
        return float(self.value) * (t2 - t) / (t2 - t1)

    def to_config(self) -> dict:
        """The YAML mapping of ``algorithms.prefix_smoothing.eps`` (times as Composer strings)."""
        config = {'schedule': self.schedule, 'value': self.value}
        required, optional = SCHEDULE_TIMES[self.schedule]
        config.update({name: time_string(getattr(self, name)) for name in (*required, *optional)})
        return config
