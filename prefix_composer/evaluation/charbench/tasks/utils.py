"""Loader for the CharBench lm-eval tasks: reads the committed JSONL next to this package,
so the tasks load offline from any working directory."""

import json
from pathlib import Path

import datasets

DATA_DIR = Path(__file__).resolve().parent.parent / 'data'


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def load_items(subtask: str, split: str, **_metadata) -> datasets.DatasetDict:
    """``test``: the subtask's items for one token split; ``dev``: its few-shot examples."""
    dev = [d for d in read_jsonl(DATA_DIR / 'dev.jsonl') if d['subtask'] == subtask and d['split'] == split]
    return datasets.DatasetDict({
        'test': datasets.Dataset.from_list(read_jsonl(DATA_DIR / f'{subtask}_{split}.jsonl')),
        'dev': datasets.Dataset.from_list(dev),
    })
