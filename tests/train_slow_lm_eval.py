"""``composer tests/train_slow_lm_eval.py SECONDS yamls/... [key=value ...]``: train.py whose lm-eval
forward batches each print ``slowed lm_eval forward batch`` and then take SECONDS longer (a test
double around ``HFLM._loglikelihood_tokens``, which ``ShardedHFLM`` calls once per forward batch;
production code has no hook)."""

import sys
import time

from lm_eval.models.huggingface import HFLM

from prefix_composer.runtime.launch import main


def slowed(seconds: float):
    score = HFLM._loglikelihood_tokens

    def score_slowly(self, requests, disable_tqdm=False, override_bs=None):
        print('slowed lm_eval forward batch', flush=True)
        time.sleep(seconds)
        return score(self, requests, disable_tqdm, override_bs)

    return score_slowly


if __name__ == '__main__':
    HFLM._loglikelihood_tokens = slowed(float(sys.argv[1]))
    main(sys.argv[2:])
