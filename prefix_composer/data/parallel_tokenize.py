"""ASCII-normalise and tokenise batches of documents in worker processes, results in input order.

Each worker rebuilds the run's tokenizer from its serialized backend (``backend_tokenizer.to_str()``,
the exact string ``tokenizer_content_hash`` hashes) and encodes whole batches with one Rust call
(``encode_batch_fast``, no offsets). Each kept document becomes ``[bos] + ids + [eos]`` with ``ids =
tokenizer(to_ascii(text), add_special_tokens=False, split_special_tokens=True)['input_ids']``:
the backend's post-processor never runs (the hub Llama-3 tokenizer's would add a second BOS), and
text that merely spells a special token (``"<|begin_of_text|>"`` inside a web page) is tokenised
as text, so the only BOS and EOS ids in the data are the document boundaries added here.

Workers start from a ``forkserver`` (a clean single-threaded process: forking the caller itself can
deadlock a child on a lock held by one of the caller's threads, e.g. torch's or lm-eval's) with
``TOKENIZERS_PARALLELISM=false`` (also what llm-foundry's ``build_tokenizer`` sets): one thread per
worker, parallelism comes from processes only.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tokenizers import Tokenizer

from prefix_composer.data.ascii_text import to_ascii

_worker_tokenizer: Optional[Tokenizer] = None
_worker_bos_eos: Optional[tuple[int, int]] = None


@dataclass
class TokenizedBatch:
    """One batch of documents after normalisation and tokenisation.

    ``ids`` is ``concat([bos] + ids(doc) + [eos])`` over the batch's documents that are non-empty
    after the ASCII rule, ``doc_tokens`` the length of each of those pieces (BOS and EOS included).
    """

    ids: np.ndarray  # int32
    doc_tokens: np.ndarray  # int64, one entry per kept document
    documents: int  # documents read, kept or not
    empty: int  # documents empty after the ASCII rule (dropped)


def load_worker_tokenizer(tokenizer_json: str, bos_id: int, eos_id: int) -> None:
    """Pool initializer: the backend tokenizer without truncation/padding, special-token text split."""
    global _worker_tokenizer, _worker_bos_eos
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.encode_special_tokens = True
    _worker_tokenizer, _worker_bos_eos = tokenizer, (bos_id, eos_id)


def tokenize_batch(texts: list[str]) -> TokenizedBatch:
    """Apply the ASCII rule, drop empty documents, encode the rest and frame each as BOS ids EOS."""
    if _worker_tokenizer is None or _worker_bos_eos is None:
        raise RuntimeError('tokenize_batch runs in a worker set up by load_worker_tokenizer.')
    bos_id, eos_id = _worker_bos_eos
    kept = [t for t in map(to_ascii, texts) if t]
    encodings = _worker_tokenizer.encode_batch_fast(kept, add_special_tokens=False)
    doc_tokens = np.fromiter((len(e.ids) + 2 for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.empty(int(doc_tokens.sum()), dtype=np.int32)
    start = 0
    for encoding, length in zip(encodings, doc_tokens.tolist()):
        ids[start] = bos_id
        ids[start + 1:start + length - 1] = encoding.ids
        ids[start + length - 1] = eos_id
        start += length
    return TokenizedBatch(ids=ids, doc_tokens=doc_tokens, documents=len(texts), empty=len(texts) - len(kept))


def ordered_bounded_map(func: Callable, items: Iterable, workers: int, initializer: Callable,
                        initargs: tuple, in_flight_per_worker: int = 2) -> Iterator:
    """``func(item)`` for each item in a pool of ``workers`` (forkserver), yielded in input order.

    Unlike ``Pool.imap`` (whose feeder thread drains the whole input), at most
    ``workers * in_flight_per_worker`` items are submitted and not yet yielded, so memory stays bounded.
    """
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}.')
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'
    window = workers * in_flight_per_worker
    context = multiprocessing.get_context('forkserver')
    context.set_forkserver_preload([__name__])
    pool = context.Pool(workers, initializer=_start_worker, initargs=(initializer, initargs))
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(func, (item,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()  # workers exit on the pool's sentinel: no signal needed
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _start_worker(initializer: Callable, initargs: tuple) -> None:
    """Workers die on SIGTERM whatever handler the parent installed (Pool.terminate relies on it:
    it holds the task queue's lock, so a worker that survives SIGTERM blocks the join forever)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    initializer(*initargs)
