"""Evaluate as trained: every packed document is BOS ids EOS and every scored lm-eval context starts
with exactly one BOS, for the packaged tokenizer (adds no BOS) and for one whose post-processor adds
BOS like the hub ``meta-llama/Meta-Llama-3-8B`` (built offline from the packaged ``tokenizer.json``)."""

from __future__ import annotations

import numpy as np
import pytest
from lm_eval.api.instance import Instance
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lm_eval_helpers import load_script, tiny_model, train_tiny, write_local_tasks
from prefix_composer.data.ascii_text import to_ascii
from prefix_composer.data.parallel_tokenize import load_worker_tokenizer, tokenize_batch
from prefix_composer.evaluation.adapter import ShardedHFLM
from prefix_composer.evaluation.harness import evaluate_lm
from prefix_composer.evaluation.tasks import build_task_manager
from prefix_composer.tokenizer import LLAMA3_BOS, LLAMA3_EOS, bos_adding_tokenizer

BOS, EOS = 128000, 128001
TASKS = ['local_hellaswag', 'charbench_count_single']
DOCS = ['The strawberry farmer counts letters.', 'naïve café ✨', '日本語',
        'A page that spells <|begin_of_text|> and <|end_of_text|> as text.', 'Short.']


def hub_like(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The packaged tokenizer with the hub Llama-3 post-processor: ByteLevel, then BOS in front of every text."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.Sequence([
        backend.post_processor,
        processors.TemplateProcessing(single=f'{LLAMA3_BOS} $A', pair=f'{LLAMA3_BOS} $A {LLAMA3_BOS} $B',
                                      special_tokens=[(LLAMA3_BOS, BOS)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=LLAMA3_BOS, eos_token=LLAMA3_EOS)


@pytest.fixture(scope='module')
def tokenizers(tokenizer):
    return {'packaged': tokenizer, 'hub_like': hub_like(tokenizer)}


@pytest.fixture(scope='module')
def local_tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bos_tasks')
    write_local_tasks(folder)
    return str(folder)


SCORE = ShardedHFLM._loglikelihood_tokens


def recorded_requests(monkeypatch) -> list:
    """Every (args, context ids, continuation ids) that ``ShardedHFLM`` scores from now on (until the next call)."""
    seen = []

    def record(self, requests, disable_tqdm=False, override_bs=None):
        seen.extend((args, list(context), list(continuation)) for args, context, continuation in requests)
        return SCORE(self, requests, disable_tqdm, override_bs)

    monkeypatch.setattr(ShardedHFLM, '_loglikelihood_tokens', record)
    return seen


def assert_one_leading_bos(requests, tokenizer):
    """Context starts with BOS, no other BOS anywhere; the ids are BOS + the plain ids of context + continuation."""
    assert requests
    for (context, continuation), context_ids, continuation_ids in requests:
        assert context_ids[0] == BOS and BOS not in context_ids[1:] + continuation_ids
        plain = tokenizer(context + continuation, add_special_tokens=False).input_ids
        assert context_ids + continuation_ids == [BOS] + plain


def test_exported_tokenizer_adds_one_bos_whichever_tokenizer_the_run_used(tokenizers, tmp_path):
    """scripts/eval_checkpoint.py's export: saved and loaded back, the packaged and the hub-like
    tokenizer both encode a document as BOS + the data pipeline's ids, and nothing else."""
    load_worker_tokenizer(tokenizers['packaged'].backend_tokenizer.to_str(), BOS, EOS)
    for name, tokenizer in tokenizers.items():
        bos_adding_tokenizer(tokenizer).save_pretrained(tmp_path / name)
        exported = AutoTokenizer.from_pretrained(tmp_path / name)
        for doc in filter(to_ascii, DOCS):  # the pipeline drops a document empty in ASCII
            assert exported(to_ascii(doc)).input_ids == tokenize_batch([doc]).ids.tolist()[:-1], (name, doc)
    eos_adding = hub_like(tokenizers['packaged'])
    eos_adding.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f'$A {LLAMA3_EOS}', special_tokens=[(LLAMA3_EOS, EOS)])
    with pytest.raises(ValueError, match=r'encodes .a. as \[64, 128001\] with its special tokens and \[64\] without'):
        bos_adding_tokenizer(eos_adding)


def test_hub_like_stand_in_adds_bos_and_the_packaged_tokenizer_does_not(tokenizers):
    text = 'Count the letters of strawberry.'
    plain = tokenizers['packaged'](text, add_special_tokens=False).input_ids
    assert BOS not in plain and tokenizers['packaged'](text).input_ids == plain
    assert tokenizers['hub_like'](text).input_ids == [BOS] + plain
    assert tokenizers['hub_like'](text, add_special_tokens=False).input_ids == plain


def test_documents_are_bos_ids_eos_for_both_tokenizers(tokenizers):
    packaged = tokenizers['packaged']
    kept = [to_ascii(d) for d in DOCS if to_ascii(d)]
    reference = [token for text in kept for token in
                 [BOS, *packaged(text, add_special_tokens=False, split_special_tokens=True).input_ids, EOS]]
    for tokenizer in tokenizers.values():
        load_worker_tokenizer(tokenizer.backend_tokenizer.to_str(), tokenizer.bos_token_id, tokenizer.eos_token_id)
        batch = tokenize_batch(DOCS)
        assert batch.ids.tolist() == reference
        assert (batch.documents, batch.empty, len(batch.doc_tokens)) == (5, 1, 4)
        starts = np.concatenate([[0], np.cumsum(batch.doc_tokens)[:-1]])
        assert np.flatnonzero(batch.ids == BOS).tolist() == starts.tolist()  # spelled BOS/EOS text stays text
        assert np.flatnonzero(batch.ids == EOS).tolist() == (np.cumsum(batch.doc_tokens) - 1).tolist()


def test_scored_requests_have_the_same_ids_for_both_tokenizers(tokenizers, local_tasks, monkeypatch):
    model = tiny_model(tokenizers['packaged']).model
    manager = build_task_manager(TASKS, [local_tasks])
    requests, metrics = {}, {}
    for name, tokenizer in tokenizers.items():
        seen = recorded_requests(monkeypatch)
        metrics[name] = evaluate_lm(model, tokenizer, TASKS, manager, batch_size=4, limit=3)
        requests[name] = seen
    assert requests['packaged'] == requests['hub_like']
    assert len(requests['packaged']) == 3 * 4 + 3 * 4  # 3 items each: hellaswag 4 endings, count 4 answers " 0".." 3"
    assert_one_leading_bos(requests['packaged'], tokenizers['packaged'])
    assert metrics['packaged'].metrics == metrics['hub_like'].metrics
    assert metrics['packaged'].items == metrics['hub_like'].items
    hashes = {name: result.evaluation['settings'].pop('tokenizer_hash') for name, result in metrics.items()}
    assert hashes['packaged'] != hashes['hub_like']  # the records tell the two tokenizers apart
    assert metrics['packaged'].evaluation == metrics['hub_like'].evaluation


def test_empty_context_rolling_windows_and_generation_prompts_start_with_one_bos(tokenizers, monkeypatch):
    model = tiny_model(tokenizers['packaged']).model
    text = 'Spell strawberry.'
    plain = tokenizers['packaged'](text, add_special_tokens=False).input_ids
    per_tokenizer = {}
    for name, tokenizer in tokenizers.items():
        lm = ShardedHFLM(model, tokenizer, batch_size=2)
        seen = recorded_requests(monkeypatch)
        lm.loglikelihood([Instance('loglikelihood', {}, ('', ' ' + text), 0)], disable_tqdm=True)
        lm.loglikelihood_rolling([Instance('loglikelihood_rolling', {}, (text,), 0)], disable_tqdm=True)
        ids, mask = lm.tok_batch_encode([text, LLAMA3_BOS + 'Hi ' + text])
        per_tokenizer[name] = (seen, ids.tolist(), mask.tolist())
        (_, empty_context, _), (_, window_context, window_continuation) = seen
        assert empty_context == [BOS]
        assert window_context + window_continuation == [BOS] + plain  # first input BOS, every text token predicted
        assert ids[0, -len(plain) - 1:].tolist() == [BOS] + plain  # left padding, then BOS and the prompt
        first = [row[m.index(1)] for row, m in zip(ids.tolist(), mask.tolist())]
        assert first == [BOS, BOS] and [row.count(BOS) for row in ids.tolist()] == [1, 1]
    assert per_tokenizer['packaged'] == per_tokenizer['hub_like']


def test_eval_checkpoint_scores_the_callbacks_ids(tokenizers, local_tasks, tmp_path, monkeypatch):
    """scripts/eval_checkpoint.py reloads the checkpoint's tokenizer from a Hugging Face folder: the
    scored ids equal the in-training ones, for a checkpoint written with either tokenizer."""
    script = load_script('eval_checkpoint')
    manager = build_task_manager(TASKS, [local_tasks])
    callback_ids = recorded_requests(monkeypatch)
    evaluate_lm(tiny_model(tokenizers['packaged']).model, tokenizers['packaged'], TASKS, manager, batch_size=4, limit=2)
    for name, tokenizer in tokenizers.items():
        run = tmp_path / name
        train_tiny(tokenizer, '1ba', save_folder=str(run / 'checkpoints'), save_interval='1ba')
        seen = recorded_requests(monkeypatch)
        script.main([str(run), '--tasks', ','.join(TASKS), '--limit', '2', '--batch-size', '4',
                     '--include-path', local_tasks, '--hf-dir', str(run / 'hf')])
        assert seen == callback_ids, name
