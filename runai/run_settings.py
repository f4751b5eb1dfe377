"""What runai/submit_train.sh needs from a run's configuration, read as train.py reads it.

    python runai/run_settings.py yamls/<variant>.yaml [key=value ...]

Prints, one per line, from the YAML merged with the overrides (``prefix_composer.config.load_config``,
interpolations resolved): run_name, tokenizer.name, callbacks.graceful_preemption.grace_seconds
rounded up to whole seconds, global_train_batch_size. A missing value prints as an empty line.
"""

from __future__ import annotations

import math
import sys

from omegaconf import OmegaConf as om

from prefix_composer.config import load_config


def settings(argv: list[str]) -> list[str]:
    cfg = load_config(argv[0], argv[1:])
    grace = om.select(cfg, 'callbacks.graceful_preemption.grace_seconds')
    values = [cfg.run_name, om.select(cfg, 'tokenizer.name'), None if grace is None else math.ceil(float(grace)),
              om.select(cfg, 'global_train_batch_size')]
    return ['' if value is None else str(value) for value in values]


if __name__ == '__main__':
    print('\n'.join(settings(sys.argv[1:])))
