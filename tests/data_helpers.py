"""Generated documents and run-config overrides for tests/test_data_pipeline.py."""

from __future__ import annotations

import json
import os
from functools import lru_cache

from prefix_composer.data.synthetic import SyntheticCorpus, vocabulary_words
from prefix_composer.objectives.vocab import token_byte_strings
from prefix_composer.tokenizer import PackagedLlama3Tokenizer

SMOKE_YAML = 'yamls/smoke_cpu.yaml'
# documents that the ASCII rule leaves empty, and one that spells the EOS token as text
EMPTY_AFTER_ASCII = ('日本語のテキストです。', '🎉🎉✨', 'Привет—мир', '')
SPELLED_EOS = 'The marker <|end_of_text|> in a web page is text, not a document boundary.'


@lru_cache(maxsize=1)
def tokenizer() -> PackagedLlama3Tokenizer:
    return PackagedLlama3Tokenizer()


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    return tuple(vocabulary_words(*token_byte_strings(tokenizer())))


def documents(count: int, seed: int = 0, mean_words: float = 60.0) -> list[str]:
    """``count`` documents: synthetic English (30% with non-ASCII snippets), with the documents of
    ``EMPTY_AFTER_ASCII`` and ``SPELLED_EOS`` placed at fixed positions among them."""
    docs = SyntheticCorpus(words(), seed, mean_words=mean_words, non_ascii_share=0.3).documents(count)
    for i, special in enumerate(EMPTY_AFTER_ASCII + (SPELLED_EOS,)):
        docs[(7 * i + 3) % count] = special
    return docs


def write_jsonl(path: str, docs: list[str]) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({'text': doc, 'id': i}, ensure_ascii=False) + '\n')
    return path


def overrides(root: str, max_seq_len: int, train_tokens: int, val_tokens: int) -> list[str]:
    """Overrides that point the smoke YAML's data settings into ``root``."""
    return [f'variables.data.raw_dir={os.path.join(root, "raw")}', f'variables.data.mds_dir={os.path.join(root, "mds")}',
            f'variables.data.train_tokens={train_tokens}', f'variables.data.val_tokens={val_tokens}',
            f'max_seq_len={max_seq_len}', f'variables.run_root={os.path.join(root, "runs")}']
