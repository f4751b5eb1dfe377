"""Names shared across layers, so that no layer imports another one for them.

``IGNORE_INDEX``: the label of a position that is not scored (llm-foundry's and HF's -100).
``SOFT_TARGETS_KEY``: the batch key under which the ``PrefixSmoothing`` algorithm puts the
sparse targets of a batch and the model's loss reads them.
"""

IGNORE_INDEX = -100
SOFT_TARGETS_KEY = 'soft_targets'
