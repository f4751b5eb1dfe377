"""Re-score a finished run: lm-eval on a Composer checkpoint, with the metrics the callback logs.

    uv run python scripts/eval_checkpoint.py /mnt/runs/prefix_unnorm_eps1 \\
        --tasks hellaswag,piqa,winogrande_debiased,arc_easy,charbench [--precision amp_bf16]

PATH is a checkpoint file (``.../checkpoints/ep0-ba3815-rank0.pt``) or a run folder (its
``checkpoints/latest-rank0.pt``). The checkpoint is exported to a Hugging Face folder (``--hf-dir``
keeps it) whose tokenizer adds one BOS in front of every text, as every training document starts
(``tokenizer.bos_adding_tokenizer``), so that ``lm_eval --model hf --model_args pretrained=<hf-dir>``
with its default arguments scores the ids this script scores. The model is loaded back from there
and scored by ``evaluate_lm`` with the callback's settings and the training tokenizer. The result is one row
``checkpoint, batch, tokens, phase=lm_eval, metrics/lm_eval/<task>/<metric>...`` in ``--out``
(default ``<run folder>/lm_eval_checkpoints.csv``; a checkpoint scored again replaces its row),
the per-item records file ``ba<batch>.jsonl.gz`` in ``--records-dir`` (default ``<run folder>/lm_eval``,
where the callback writes; an existing file there evaluated with other settings is refused, not
replaced), and the metrics printed as JSON. Use the run's ``precision`` to reproduce the callback's
numbers and records.

The other measurements of ``docs/evaluation.md``, written beside ``lm_eval/`` in the run folder
(``<run folder>/<kind>/ba<batch>.jsonl.gz``): ``--val-data`` (the eval split, an MDS folder such as
``<mds_dir>/val``) writes ``validation/`` (every sequence of the split, ``--val-batch-size`` per forward)
and, with ``--recovery '{"positions": 2000}'``, ``recovery/``; ``--probes '{}'`` writes ``probes/``
(its untrained baseline is read from the run's ``probes/ba0.jsonl.gz`` when present).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from typing import Any

import torch
import transformers
from composer.core import Precision
from composer.models.huggingface import HuggingFaceModel, get_hf_config_from_composer_state_dict
from composer.utils import safe_torch_load
from llmfoundry.data.text_data import StreamingTextDataset
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from prefix_composer.evaluation.harness import AUTOCAST_DTYPES, METRIC_PREFIX, evaluate_lm, requested_settings
from prefix_composer.evaluation.records import (
    RECORDS_SUBDIR,
    read_header,
    read_records,
    records_folder,
    records_path,
    run_identity,
    settings_differences,
    write_records,
)
from prefix_composer.evaluation.prefix_recovery import recovery_plan, recovery_records, recovery_settings
from prefix_composer.evaluation.spelling_probes import macro_accuracy, probe_records, probe_settings
from prefix_composer.evaluation.tasks import build_task_manager, check_tasks
from prefix_composer.evaluation.validation_items import evaluate_split, validation_records
from prefix_composer.files import read_json
from prefix_composer.objectives import token_byte_strings
from prefix_composer.runtime.experiment import RECORD_DAMAGED, RECORD_NAME, unflatten_block
from prefix_composer.tokenizer import bos_adding_tokenizer, tokenizer_content_hash
from prefix_composer.training.algorithm import PrefixSmoothing

LATEST_CHECKPOINT = os.path.join('checkpoints', 'latest-rank0.pt')


def resolve_checkpoint(path: str) -> str:
    """``path`` itself if it is a file, else the run folder's ``checkpoints/latest-rank0.pt``."""
    if os.path.isfile(path):
        return path
    candidate = os.path.join(path, LATEST_CHECKPOINT)
    if os.path.isdir(path) and os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(f'{path} is neither a checkpoint file nor a run folder with {LATEST_CHECKPOINT}.')


def export_hf_folder(checkpoint: dict[str, Any], out_dir: str) -> PreTrainedTokenizerBase:
    """Write the checkpoint's model and tokenizer as a Hugging Face folder (``from_pretrained``-readable);
    returns the training tokenizer.

    A tokenizer saved under a project class (``PackagedLlama3Tokenizer``) is a plain
    ``tokenizer.json`` fast tokenizer, loaded as ``PreTrainedTokenizerFast``; the folder gets its
    ``bos_adding_tokenizer`` form, which ``AutoTokenizer`` (and ``lm_eval --model hf``) load.
    """
    hf_state = checkpoint['state']['integrations']['huggingface']
    tokenizer_files = hf_state.get('tokenizer') or {}
    tokenizer_config = tokenizer_files.get('tokenizer_config.json', {}).get('content', {})
    if 'tokenizer.json' in tokenizer_files and not hasattr(transformers, tokenizer_config.get('tokenizer_class', '')):
        tokenizer_config['tokenizer_class'] = 'PreTrainedTokenizerFast'
    tokenizer = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(hf_state, tokenizer_save_dir=out_dir)
    if tokenizer is None:
        raise ValueError('The checkpoint holds no tokenizer: it was not written by a HuggingFaceModel with a tokenizer.')
    bos_adding_tokenizer(tokenizer).save_pretrained(out_dir)

    config = get_hf_config_from_composer_state_dict(checkpoint)
    model = AutoModelForCausalLM.from_config(config)
    weights = dict(checkpoint['state']['model'])
    consume_prefix_in_state_dict_if_present(weights, prefix='model.')
    model.load_state_dict(weights, strict=True)
    model.save_pretrained(out_dir)
    return tokenizer


def recorded_objective(checkpoint_path: str) -> dict[str, Any] | None:
    """The run's ``algorithms.prefix_smoothing`` block in the experiment record next to the checkpoint;
    None without one."""
    path = os.path.join(os.path.dirname(checkpoint_path), RECORD_NAME)
    if not os.path.isfile(path):
        return None
    block = unflatten_block(read_json(path, 'experiment record', RECORD_DAMAGED)['experiment'], 'algorithms.prefix_smoothing')
    return block or None


def objective_identity(block: dict[str, Any]) -> dict[str, Any]:
    """An ``algorithms.prefix_smoothing`` block as the callback records the objective (``state_run_identity``):
    the ``PrefixSmoothing`` spec with every parameter, so blocks that differ only in omitted defaults agree."""
    return PrefixSmoothing(**block).spec.to_config(complete=True)


def checkpoint_run_identity(checkpoint: dict[str, Any], objective: dict[str, Any] | None) -> dict[str, Any]:
    """The records header's ``run`` for the checkpoint: what the ``lm_eval`` callback saved in it,
    else built from the checkpoint (name, seed, model config) and ``objective`` (the ``--objective`` block,
    else the run's experiment record's), which a run with ``PrefixSmoothing`` but no ``lm_eval`` callback
    needs; a block is compared and recorded as ``objective_identity``."""
    state = checkpoint['state']
    saved = (state.get('callbacks') or {}).get('LMEvalCallback', {}).get('run')
    if saved is not None:
        if objective is not None and objective_identity(objective) != saved['objective']:
            raise ValueError(f'--objective {json.dumps(objective)} contradicts the checkpoint, which was trained with '
                             f'{json.dumps(saved["objective"])}; drop --objective.')
        return saved
    smoothed = any(name == 'PrefixSmoothing' for name, _ in state.get('algorithms', []))
    if smoothed and objective is None:
        raise ValueError(f'The checkpoint was trained with the PrefixSmoothing algorithm but without callbacks.lm_eval, and '
                         f'no {RECORD_NAME} lies next to it, so nothing records the objective that the per-item records need. '
                         'Pass the run\'s '
                         "algorithms.prefix_smoothing block: --objective '{\"objective\": \"prefix_softmax\", "
                         '"eps": 1.0, "tau": 1.0, "support": "inclusive"}\'.')
    config = get_hf_config_from_composer_state_dict(checkpoint).to_dict()
    return run_identity(state['run_name'], state['rank_zero_seed'], config,
                        objective_identity(objective) if smoothed else None)


def refuse_other_settings(path: str, settings: dict[str, Any]) -> None:
    """``ValueError`` if a records file at ``path`` was evaluated with settings other than ``settings``
    (only the keys ``settings`` has are compared)."""
    if not os.path.exists(path):
        return
    recorded = read_header(path)['settings']
    differences = settings_differences({k: recorded.get(k) for k in settings}, settings)
    if differences:
        raise ValueError(f'{path} holds records of this checkpoint evaluated differently ({"; ".join(differences)}); '
                         'it is not replaced. Pass --records-dir to write these records elsewhere.')


def write_row(path: str, row: dict[str, Any]) -> None:
    """Add ``row`` to the CSV at ``path`` (replacing a row of the same checkpoint), widening the header."""
    rows = []
    if os.path.exists(path):
        with open(path, newline='') as f:
            rows = [r for r in csv.DictReader(f) if r['checkpoint'] != row['checkpoint']]
    rows.append(row)
    columns = list(dict.fromkeys(key for r in rows for key in r))
    tmp = f'{path}.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def measure_more(args: argparse.Namespace, model: Any, tokenizer: Any, run: dict[str, Any], timestamp: dict[str, Any],
                 run_dir: str, dtype: Any, probes: dict[str, Any] | None, recovery: dict[str, Any] | None) -> None:
    """The validation, probes and recovery records of the checkpoint that the flags ask for."""
    batch, tokens = timestamp['batch'], timestamp['token']
    pieces, specials = token_byte_strings(tokenizer)
    tokenizer_hash = tokenizer_content_hash(tokenizer)
    model.eval()
    dataset = None
    if args.val_data is not None:
        split_dir = os.path.abspath(args.val_data)
        dataset = StreamingTextDataset(tokenizer=tokenizer, local=os.path.dirname(split_dir), split=os.path.basename(split_dir),
                                       shuffle=False, max_seq_len=model.config.max_position_embeddings,
                                       batch_size=args.val_batch_size)
        items, digests = evaluate_split(model, dataset, tokenizer, args.val_batch_size, dtype)
        write_records(records_path(records_folder(run_dir, 'validation'), batch),
                      validation_records(items, digests, run, batch, tokens, tokenizer_hash, dtype))
    if probes is not None:
        untrained_path = records_path(records_folder(run_dir, 'probes'), 0)
        untrained = macro_accuracy(read_records(untrained_path).items) if batch and os.path.exists(untrained_path) else None
        write_records(records_path(records_folder(run_dir, 'probes'), batch),
                      probe_records(model.get_input_embeddings().weight, pieces, specials, probes, run, batch, tokens,
                                    untrained, tokenizer_hash))
    if recovery is not None:
        write_records(records_path(records_folder(run_dir, 'recovery'), batch),
                      recovery_records(model, tokenizer, dataset, recovery_plan(dataset, pieces, specials, recovery),
                                       recovery, run, batch, tokens, tokenizer_hash, dtype))


def main(argv: list[str]) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('path', help='Composer checkpoint file or run folder')
    parser.add_argument('--tasks', required=True, type=lambda s: [t for t in s.split(',') if t], help='comma-separated')
    parser.add_argument('--limit', type=float, help='documents per task (>= 1) or fraction (< 1)')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--num-fewshot', type=int, default=0)
    parser.add_argument('--bootstrap-iters', type=int, default=1000)
    parser.add_argument('--fewshot-random-seed', type=int, default=1234)
    parser.add_argument('--precision', choices=[p.value for p in AUTOCAST_DTYPES], default='fp32')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--include-path', action='append', default=[], help='extra task YAML folder')
    parser.add_argument('--hf-dir', help='keep the exported Hugging Face folder here')
    parser.add_argument('--out', help='CSV to add the row to (default <run folder>/lm_eval_checkpoints.csv)')
    parser.add_argument('--records-dir', help=f'folder of the per-item records (default <run folder>/{RECORDS_SUBDIR})')
    parser.add_argument('--objective', type=json.loads,
                        help='JSON algorithms.prefix_smoothing block, for checkpoints trained without callbacks.lm_eval')
    parser.add_argument('--val-data', help='the eval split (MDS folder) for validation/ and recovery/ records')
    parser.add_argument('--val-batch-size', type=int, default=8)
    parser.add_argument('--probes', type=json.loads, help="JSON callbacks.lm_eval.probes settings ('{}': defaults)")
    parser.add_argument('--recovery', type=json.loads, help="JSON callbacks.lm_eval.recovery settings (needs --val-data)")
    args = parser.parse_args(argv)
    probes = None if args.probes is None else probe_settings(args.probes, '--probes')
    recovery = None if args.recovery is None else recovery_settings(args.recovery, '--recovery')
    if recovery is not None and args.val_data is None:
        parser.error('--recovery draws its positions from the eval split: pass --val-data.')
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit

    checkpoint_path = os.path.abspath(resolve_checkpoint(args.path))
    task_manager = build_task_manager(args.tasks, args.include_path)
    check_tasks(task_manager, args.tasks)  # before the checkpoint is read

    checkpoint = safe_torch_load(checkpoint_path)
    run = checkpoint_run_identity(checkpoint, args.objective or recorded_objective(checkpoint_path))
    timestamp = checkpoint['state']['timestamp']['Timestamp']
    run_dir = os.path.dirname(os.path.dirname(checkpoint_path))
    records = records_path(args.records_dir or os.path.join(run_dir, RECORDS_SUBDIR), timestamp['batch'])
    dtype = AUTOCAST_DTYPES[Precision(args.precision)]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf_dir or tmp
        tokenizer = export_hf_folder(checkpoint, hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir).to(args.device)
    refuse_other_settings(records, requested_settings(args.tasks, tokenizer, limit, args.num_fewshot,
                                                      args.fewshot_random_seed, dtype))  # before scoring
    result = evaluate_lm(
        model, tokenizer, args.tasks, task_manager,
        batch_size=args.batch_size, limit=limit, num_fewshot=args.num_fewshot,
        bootstrap_iters=args.bootstrap_iters, fewshot_random_seed=args.fewshot_random_seed,
        mixed_precision_dtype=dtype,
    )
    evaluated = result.records(run, timestamp['batch'], timestamp['token'])
    refuse_other_settings(records, evaluated.header['settings'])  # task versions and items too
    write_records(records, evaluated)

    measure_more(args, model, tokenizer, run, timestamp, run_dir, dtype, probes, recovery)

    row = {'checkpoint': checkpoint_path, 'batch': timestamp['batch'], 'tokens': timestamp['token'], 'phase': 'lm_eval'}
    row.update({f'{METRIC_PREFIX}/{name}': value for name, value in result.metrics.items()})
    write_row(args.out or os.path.join(run_dir, 'lm_eval_checkpoints.csv'), row)
    print(json.dumps(result.metrics, indent=1, sort_keys=True))
    print(f'Per-item records: {records}')
    return result.metrics


if __name__ == '__main__':
    main(sys.argv[1:])
