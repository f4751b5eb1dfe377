"""StochasTok splits (Sims et al., arXiv 2506.01687): the split table of a byte vocabulary and the
random expansion of token sequences (numpy/torch only).

**Split table.** A split of token ``t`` is an ordered pair ``(a, b)`` of non-special ids with
``bytes(a) + bytes(b) == bytes(t)``; special ids are never split and never a half. Built once,
vectorized: the polynomial hashes (two bases, mod 2^64) of every prefix and suffix of every token
are looked up among the hashes of the whole tokens (prefix sums over the concatenated bytes); the
pairs found concatenate exactly (``tests/test_stochastok.py`` checks every pair on the real
vocabulary, and completeness against a byte-by-byte dictionary search).

**Expansion** (the reference ``StochastokProcessor.expand``): a sample with ``n`` tokens gets
``N = floor(expand_prop * n)`` split attempts. An attempt draws a position uniformly from the
sequence as it is at that moment; the token there, if it has a split, is replaced by one of its
splits drawn uniformly, else it stays (the attempt is spent). So a half made by an earlier attempt
can be drawn and split again, and the number of splits is ``N`` times the share of splittable
tokens among the drawn positions (at most ``N``). The reference makes the attempts one at a
time; here they are made in ``R = ceil(expand_prop / ROUND_PROP)`` rounds of (near) equal size,
the attempts of a round being distinct positions drawn from the sequence as it is at the start of
the round, so the sequence grows by at most ``ROUND_PROP`` of its length between draws.
Padding (``valid`` false) is never drawn; the expanded sequence is cut back to its original width
at the end (what is pushed past the end is dropped).

**Randomness** is a counter-based hash of ``(seed, sample position, round, stream, column)``
(murmur3's 32-bit finalizer, in int64 arithmetic that never overflows), so a sample's expansion
depends only on the seed and its position in the data order, on any device and any batch layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

# Largest share of a sequence's length drawn in one round (see the module docstring).
ROUND_PROP = 0.01
_HASH_BASES = (np.uint64(0x100000001B3), np.uint64(0x9E3779B97F4A7C15))  # odd: invertible mod 2^64
_MASK32 = 0xFFFFFFFF
_SELECT, _CHOOSE = 0, 1  # hash streams: which positions a round draws, which split a drawn token takes


@dataclasses.dataclass(frozen=True)
class SplitTable:
    """Splits in CSR form: the splits of id ``t`` are ``(left[k], right[k])`` for ``offsets[t] <= k < offsets[t+1]``."""

    offsets: torch.Tensor  # int64 [V + 1]
    left: torch.Tensor     # int64 [number of splits]
    right: torch.Tensor    # int64 [number of splits]

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device) -> SplitTable:
        return SplitTable(self.offsets.to(device), self.left.to(device), self.right.to(device))

    def splits_of(self, token: int) -> list[tuple[int, int]]:
        lo, hi = int(self.offsets[token]), int(self.offsets[token + 1])
        return list(zip(self.left[lo:hi].tolist(), self.right[lo:hi].tolist()))


def _inverse_mod_2_64(base: np.uint64) -> np.uint64:
    return np.uint64(pow(int(base), -1, 1 << 64))


def _substring_hashes(flat: np.ndarray, base: np.uint64, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``sum_i x_i base^(m-1-i)`` mod 2^64 of ``flat[starts:ends]`` for each pair (``x = byte + 1``),
    from exclusive prefix sums of ``x_i base^-i``: ``base^(end-1) * (C[end] - C[start])``."""
    with np.errstate(over='ignore'):
        powers = np.concatenate([[np.uint64(1)], np.cumprod(np.full(len(flat) - 1, base, dtype=np.uint64))])
        inverse = np.concatenate([[np.uint64(1)], np.cumprod(np.full(len(flat) - 1, _inverse_mod_2_64(base),
                                                                     dtype=np.uint64))])
        sums = np.concatenate([[np.uint64(0)], np.cumsum(flat * inverse, dtype=np.uint64)])
        return powers[ends - 1] * (sums[ends] - sums[starts])


def build_split_table(pieces: Sequence[bytes], specials: set[int]) -> SplitTable:
    """Every split of every non-special id into two non-special ids (module docstring)."""
    vocab = len(pieces)
    regular = np.array([i not in specials and len(p) > 0 for i, p in enumerate(pieces)])
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.frombuffer(b''.join(pieces), dtype=np.uint8).astype(np.uint64) + np.uint64(1)

    ids = np.flatnonzero(regular & (lengths >= 2))  # candidates for being split
    cuts_per_id = lengths[ids] - 1
    token = np.repeat(ids, cuts_per_id)
    cut = np.arange(len(token)) - np.repeat(np.cumsum(cuts_per_id) - cuts_per_id, cuts_per_id) + 1
    begin, middle, end = starts[token], starts[token] + cut, starts[token] + lengths[token]

    whole_ids = np.flatnonzero(regular)
    halves: dict[str, np.ndarray] = {}
    found = np.ones(len(token), dtype=bool)
    for base in _HASH_BASES:
        whole = _substring_hashes(flat, base, starts[whole_ids], starts[whole_ids] + lengths[whole_ids])
        order = np.argsort(whole, kind='stable')
        sorted_hashes, sorted_ids = whole[order], whole_ids[order]
        if base == _HASH_BASES[0] and np.any(sorted_hashes[1:] == sorted_hashes[:-1]):
            raise ValueError('Two vocabulary tokens share a byte hash; the split table cannot be built by hashing.')
        for side, (lo, hi) in (('left', (begin, middle)), ('right', (middle, end))):
            h = _substring_hashes(flat, base, lo, hi)
            at = np.minimum(np.searchsorted(sorted_hashes, h), len(sorted_hashes) - 1)
            hit = sorted_hashes[at] == h
            if base == _HASH_BASES[0]:
                halves[side] = np.where(hit, sorted_ids[at], -1)
            else:  # the second hash must name the same id
                hit &= sorted_ids[at] == halves[side]
            found &= hit
    token, left, right = token[found], halves['left'][found], halves['right'][found]
    found_lengths = lengths[left] + lengths[right]
    if np.any(found_lengths != lengths[token]):
        raise AssertionError('split table: a pair whose lengths do not add up (hash collision)')
    counts = np.bincount(token, minlength=vocab)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    order = np.lexsort((cut[found], token))  # by token, then by cut position
    return SplitTable(torch.from_numpy(offsets.astype(np.int64)), torch.from_numpy(left[order].astype(np.int64)),
                      torch.from_numpy(right[order].astype(np.int64)))


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for ``0 <= x, c < 2^32`` without leaving int64's range."""
    return (((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c) & _MASK32


def _mix(h: torch.Tensor, value) -> torch.Tensor:
    """Absorb the 32-bit ``value`` into the hash state ``h`` (murmur3 fmix32 of ``h ^ value + golden``)."""
    h = ((h ^ (value & _MASK32)) + 0x9E3779B9) & _MASK32
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _uniform_hash(seed: int, positions: torch.Tensor, round_: int, stream: int, width: int) -> torch.Tensor:
    """int64 in [0, 2^32): the hash of (seed, sample position, round, stream, column) for a [B, width] grid."""
    h = _mix(torch.zeros_like(positions), seed & _MASK32)
    h = _mix(h, (seed >> 32) & _MASK32)
    h = _mix(_mix(h, positions & _MASK32), positions >> 32)
    h = _mix(h, round_ * 2 + stream)[:, None]
    return _mix(h, torch.arange(width, device=positions.device)[None, :])


@dataclasses.dataclass(frozen=True)
class Expansion:
    """A batch after splitting and the cut: ``input_ids`` [B, W]; ``source`` [B, W], the original
    position each entry comes from (both halves of a split point at the split token's position);
    ``splits`` and ``attempts`` [B] per sample; ``dropped`` [B], original valid tokens pushed past the cut."""

    input_ids: torch.Tensor
    source: torch.Tensor
    splits: torch.Tensor
    attempts: torch.Tensor
    dropped: torch.Tensor


def attempts_per_round(attempts: torch.Tensor, rounds: int) -> list[torch.Tensor]:
    """``attempts`` [B] split into ``rounds`` near-equal parts: round r gets floor((r+1)N/R) - floor(rN/R)."""
    bounds = [attempts * r // rounds for r in range(rounds + 1)]
    return [bounds[r + 1] - bounds[r] for r in range(rounds)]


def expand(input_ids: torch.Tensor, valid: torch.Tensor, table: SplitTable, expand_prop: float, seed: int,
           positions: torch.Tensor) -> Expansion:
    """StochasTok expansion of each row of ``input_ids`` [B, W] (module docstring), cut back to W.

    ``valid`` [B, W]: positions that count and may be drawn (not padding); ``positions`` [B]: each
    sample's position in the data order, which with ``seed`` fixes its randomness.
    """
    batch, width = input_ids.shape
    device = input_ids.device
    vocab = len(table.offsets) - 1
    table = table.to(device)
    counts = table.counts
    positions = positions.to(device=device, dtype=torch.int64)

    tokens, original_valid = input_ids, valid
    source = torch.arange(width, device=device).expand(batch, width)
    lengths = torch.full((batch,), width, device=device)  # entries of each row (valid or not)
    attempts = (valid.sum(1).to(torch.float64) * expand_prop).floor().to(torch.int64)  # int(n * p), as the reference
    splits = torch.zeros(batch, dtype=torch.int64, device=device)
    rounds = math.ceil(round(expand_prop / ROUND_PROP, 9)) if expand_prop > 0 and len(table.left) else 0  # 0.07: 7, not 8
    for r, k in enumerate(attempts_per_round(attempts, rounds)):
        current = tokens.shape[1]
        column = torch.arange(current, device=device)
        keys = (_uniform_hash(seed, positions, r, _SELECT, current) << 24) | column
        keys = keys.masked_fill(~valid, torch.iinfo(torch.int64).max)
        threshold = keys.sort(dim=1).values.gather(1, (k - 1).clamp(min=0)[:, None])
        in_vocab = (tokens >= 0) & (tokens < vocab)
        safe = tokens.clamp(0, vocab - 1)
        n_splits = counts[safe].masked_fill(~in_vocab, 0)
        split = (keys <= threshold) & (k > 0)[:, None] & valid & (n_splits > 0)
        choice = table.offsets[safe] + ((_uniform_hash(seed, positions, r, _CHOOSE, current) * n_splits) >> 32)
        choice = choice.masked_fill(~split, 0)  # a valid index: the table has a split here

        grow = split.to(torch.int64)
        start = torch.cumsum(1 + grow, dim=1) - 1 - grow  # new index of each entry (of its left half)
        in_row = column[None, :] < lengths[:, None]
        lengths = lengths + grow.sum(1)
        new_width = int(lengths.max())
        spill = new_width  # a column past the end that takes the writes of entries that are not in the row
        first = start.masked_fill(~in_row, spill)
        second = (start + 1).masked_fill(~split, spill)
        halves = torch.where(split, table.left[choice], tokens)

        def place(first_values: torch.Tensor, second_values: torch.Tensor) -> torch.Tensor:
            out = first_values.new_zeros((batch, new_width + 1))
            out.scatter_(1, first, first_values).scatter_(1, second, second_values)
            return out[:, :new_width]

        tokens = place(halves, table.right[choice])
        valid = place(valid & in_row, split)
        source = place(source, source)
        splits = splits + grow.sum(1)
    kept = torch.zeros((batch, width), dtype=torch.bool, device=device).scatter_(1, source[:, :width], valid[:, :width])
    return Expansion(tokens[:, :width], source[:, :width], splits, attempts,
                     (original_valid & ~kept).sum(1))
