"""Names shared across layers, so that no layer imports another one for them.

``IGNORE_INDEX``: the label of a position that is not scored (llm-foundry's and HF's -100).
``SOFT_TARGETS_KEY``: the batch key under which the ``PrefixSmoothing`` algorithm puts the
sparse targets of a batch and the model's loss reads them.
``is_number``: the test of every numeric setting (YAML's ``true`` is no number, though Python's bool is an int).
"""

import numbers

IGNORE_INDEX = -100
SOFT_TARGETS_KEY = 'soft_targets'


def is_number(value) -> bool:
    """A real number that is not a boolean (``eps: true`` must not pass as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
