"""Regenerate prefix_composer/evaluation/charbench/data/*.jsonl (needs /usr/share/dict/american-english
from Debian's `wamerican`: `apt-get install -y wamerican`).

    uv run python scripts/make_charbench.py [--wordlist PATH] [--out DIR] [--seed N]
"""

from prefix_composer.evaluation.charbench.generate import main

if __name__ == '__main__':
    main()
