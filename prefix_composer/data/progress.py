"""A progress bar over documents that also shows tokens/s (tqdm, on stderr)."""

from __future__ import annotations

import time
from typing import Optional

from tqdm import tqdm


class DocTokenProgress:
    """``tqdm`` counting documents (documents/s is tqdm's rate); tokens and tokens/s in the postfix.

    ``token_label`` names what is counted (``tok`` for real tokens, ``est tok`` for estimates);
    ``token_total`` adds a ``done/total`` token count.
    """

    def __init__(self, desc: str, total_docs: Optional[int] = None, token_label: str = 'tok',
                 token_total: Optional[int] = None, disable: bool = False):
        self.bar = tqdm(total=total_docs, desc=desc, unit='doc', unit_scale=True, dynamic_ncols=True,
                        mininterval=1.0, disable=disable)
        self.token_label = token_label
        self.token_total = token_total
        self.tokens = 0
        self.start = time.perf_counter()
        self.last_postfix = 0.0

    def update(self, documents: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(documents)
        now = time.perf_counter()
        if now - self.last_postfix >= 1.0:
            self.last_postfix = now
            self.bar.set_postfix_str(self._postfix(now - self.start), refresh=False)

    def _postfix(self, elapsed: float) -> str:
        done = f'{self.tokens:.4g}' + (f'/{self.token_total:.4g}' if self.token_total else '')
        return f'{done} {self.token_label}, {self.tokens / max(elapsed, 1e-9):,.0f} {self.token_label}/s'

    def close(self) -> None:
        self.bar.set_postfix_str(self._postfix(time.perf_counter() - self.start), refresh=False)
        self.bar.close()
