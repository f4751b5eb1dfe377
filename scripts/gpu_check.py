"""GPU check: the CUDA paths' numerics, then loss-level and training time, memory and MFU
against the best public kernels, as ratios measured in this one run; one table on stdout, JSON under ``--out``.

Prepare on a CPU machine with the project's environment (the GPU machine has no tokenizer package
and reaches no registry; both files travel with the working tree):

    uvx pip download liger-kernel==0.8.5 --no-deps --only-binary :all: -d gpu_vendor
    uv run python scripts/gpu_check.py --write-vocab gpu_vendor/llama3_vocab.json.gz

On the GPU machine (torch, transformers, triton, numpy, PyYAML; no Composer):

    PYTHONPATH=. python scripts/gpu_check.py --vocab gpu_vendor/llama3_vocab.json.gz \\
        --vendor gpu_vendor --out gpu_check_out [--sections loss chunks train]

``--smoke`` runs every path at tiny shapes on the CPU (the first 2048 ids of the vocabulary, a
one-layer model); Liger-Kernel needs CUDA and is reported as skipped there. Sections:

1. numerics (always, first): every objective (the two softmax ones with both supports), both loss
   paths (``logits``: ``z = h W^T`` then ``soft_target_cross_entropy``; ``fused``), float32 and bf16
   autocast, against ``bench_common.dense_reference`` (float64) on real-vocabulary rows; Liger's
   ``ce`` too when present. Exits before any timing if an error exceeds its bound.
2. loss: fwd+bwd time (median of ``--repeats``, methods interleaved) and peak memory above the inputs
   (CUDA allocator), V = 128,256, bf16 autocast, N in {8192, 32768}, d in {576, 1536}.
3. chunks: our fused ``ce`` over tokens-per-chunk values; the fastest is the recommended CUDA default.
4. train: both brief configs (``yamls/base/*.yaml``) at seq 2048, a plain torch loop (HF
   ``LlamaForCausalLM``, bf16 autocast, fused AdamW) with the project's targets and losses:
   tokens/s and MFU (llm-foundry's ``flops_per_batch``) of every objective on both paths at the
   YAML's micro-batch, and the largest micro-batch that fits.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile

import torch
import torch.nn.functional as F
import yaml
from bench_common import (IGNORE, benchmark_spec, dense_reference, errors_against, input_stds, refill_inputs,
                          run_path, sync)

from prefix_composer.losses.fused import fused_chunk_tokens, fused_linear_soft_target_cross_entropy
from prefix_composer.losses.soft_target import soft_target_cross_entropy
from prefix_composer.objectives.labels import next_token_labels
from prefix_composer.objectives.targets import OBJECTIVES, SparseTargets, TargetTable, build_target_table
from prefix_composer.objectives.vocab import read_byte_vocab, write_byte_vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRIEF_YAMLS = {'brief001_100m': 'yamls/base/brief001_100m.yaml', 'brief000_500m': 'yamls/base/brief000_500m.yaml'}
MFU_CONFIG = 'brief000_500m'
SECTIONS = ('loss', 'chunks', 'train')
SPECS = [(o, 'inclusive') for o in OBJECTIVES] + [('prefix_softmax', 'strict'), ('prefix_softmax_norm', 'strict')]
PREFIX_OBJECTIVES = [o for o in OBJECTIVES if o.startswith('prefix')]
# Relative error bounds of the numerics (max |error| / max |reference|): float32 math, and bf16
# matmul inputs (relative rounding 2^-8) with float32 softmax math.
BOUNDS = {'float32': 1e-4, 'bfloat16': 2e-2}
# The goals of the GPU check (docs/performance.md), as ratios within one run.
GOALS = {'prefix_vs_ce_time': 1.05, 'ce_vs_liger_time': 1.1, 'ce_vs_liger_peak': 1.0, 'objective_vs_ce_tokens': 0.98,
         'mfu_500m': 0.40}
# Dense bf16 tensor-core peak of H100/H200 SXM, as Composer's SpeedMonitor (GPU_AVAILABLE_FLOPS) has it.
BF16_PEAK_FLOPS = {'h100': 1.979e15 / 2, 'h200': 1.979e15 / 2}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Problem sizes: the full ones on CUDA, tiny ones for ``--smoke``."""

    vocab_limit: int | None
    numerics_rows: int
    numerics_hidden: int
    loss_tokens: tuple[int, ...]
    loss_hidden: tuple[int, ...]
    chunks: tuple[int, ...]
    seq_len: int
    warmup_steps: int
    timed_steps: int
    micro_batches: tuple[int, ...]  # candidates of the largest-micro-batch search, ascending
    model_override: dict


FULL = Shapes(None, 64, 64, (8192, 32768), (576, 1536), (256, 512, 2048, 4096, 8192), 2048, 2, 6,
              (8, 16, 24, 32, 48, 64, 96, 128), {})
SMOKE = Shapes(2048, 24, 16, (64,), (16,), (16, 40), 16, 1, 1, (1, 2),
               {'hidden_size': 32, 'num_hidden_layers': 1, 'num_attention_heads': 2, 'num_key_value_heads': 1,
                'intermediate_size': 64})


# ----------------------------------------------------------------------------- setup

def unpack_vendor(folder: str) -> list[str]:
    """Put every pure-Python wheel in ``folder`` on ``sys.path`` (unpacked into a temporary folder)."""
    wheels = sorted(glob.glob(os.path.join(folder, '*.whl')))
    if not wheels:
        raise SystemExit(f'--vendor {folder}: no .whl there; run `uvx pip download liger-kernel==0.8.5 --no-deps '
                         f'--only-binary :all: -d {folder}` on a machine with network access.')
    target = tempfile.mkdtemp(prefix='gpu_check_vendor_')
    for wheel in wheels:
        if not wheel.endswith('-none-any.whl'):
            raise SystemExit(f'--vendor: {wheel} is not a pure-Python wheel (*-none-any.whl); only those can travel.')
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    sys.path.insert(0, target)
    return [os.path.basename(w) for w in wheels]


def load_liger(device: str):
    """``(LigerFusedLinearCrossEntropyLoss class, version)``, or ``(None, reason)``."""
    if device != 'cuda':
        return None, 'skipped: Liger-Kernel needs CUDA'
    try:
        from importlib.metadata import version

        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except Exception as e:  # noqa: BLE001 - any import failure is reported, not fatal
        return None, f'not importable ({type(e).__name__}: {e}); pass --vendor DIR with its wheel'
    try:
        found = version('liger-kernel')
    except Exception:  # noqa: BLE001 - unpacked wheels without metadata on the path
        found = 'unknown version'
    return LigerFusedLinearCrossEntropyLoss, found


def brief_model_config(path: str, seq_len: int, override: dict, vocab: int | None) -> tuple[dict, int]:
    """``model.config`` and ``device_train_microbatch_size`` of a brief YAML; positions = ``seq_len``.

    Read with PyYAML (no OmegaConf on the GPU machine): an interpolation left in another key is an error.
    """
    with open(os.path.join(REPO, path)) as f:
        cfg = yaml.safe_load(f)
    model = dict(cfg['model']['config'], max_position_embeddings=seq_len, **override)
    if vocab is not None:
        model['vocab_size'] = vocab
    left = [k for k, v in model.items() if isinstance(v, str) and '${' in v]
    if left:
        raise SystemExit(f'{path}: model.config keys {left} hold interpolations the check cannot resolve.')
    return model, int(cfg['device_train_microbatch_size'])


def peak_flops(device: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device != 'cuda':
        return None
    name = torch.cuda.get_device_name().lower()
    return next((flops for key, flops in BF16_PEAK_FLOPS.items() if key in name), None)


def llm_foundry_flops_per_sequence(n_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    """llm-foundry's ``flops_per_batch`` for one sequence: ``3·(2·P·s + 2·2·L·d·s²)`` (forward, and a
    backward of twice the forward), P the parameters without an untied input embedding."""
    return 3 * (2 * n_params * seq_len + n_layers * 2 * 2 * d_model * seq_len ** 2)


def flop_params(model: torch.nn.Module) -> int:
    """Parameters as llm-foundry counts them for FLOPs: unique ones, minus an untied input embedding."""
    unique = {id(p): p.numel() for p in model.parameters()}
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    return sum(unique.values()) - (0 if tied else embedding.numel())


# ----------------------------------------------------------------------------- report

class Report:
    """Rows of the final table (section, item, value, goal, ok) plus the JSON, written after each section."""

    def __init__(self, out: str, meta: dict):
        self.path = os.path.join(out, 'gpu_check.json')
        os.makedirs(out, exist_ok=True)
        self.data = {'meta': meta, 'numerics': [], 'loss': [], 'chunks': [], 'train': [], 'goals': [], 'seconds': {}}

    def save(self) -> None:
        with open(self.path, 'w') as f:
            json.dump(self.data, f, indent=1, default=str)

    def goal(self, section: str, item: str, value: float | None, bound: float, kind: str) -> None:
        """``kind='max'``: value must be <= bound; ``'min'``: >= bound; ``None`` value: not measured."""
        ok = None if value is None else (value <= bound if kind == 'max' else value >= bound)
        self.data['goals'].append({'section': section, 'item': item, 'value': value, 'goal': f'{"<=" if kind == "max" else ">="} {bound}', 'ok': ok})


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    def cell(v):
        if isinstance(v, float):
            return f'{v:.3g}' if abs(v) < 1e4 else f'{v:.4g}'
        return '-' if v is None else str(v)
    text = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) if text else len(c) for i, c in enumerate(columns)]
    print(f'\n{title}\n' + '  '.join(c.ljust(w) for c, w in zip(columns, widths)), flush=True)
    for t in text:
        print('  '.join(v.ljust(w) for v, w in zip(t, widths)), flush=True)


# ----------------------------------------------------------------------------- numerics

def numerics_labels(tables: dict, vocab: int, specials: set[int], n: int, gen: torch.Generator) -> torch.Tensor:
    """Half random gold ids, half the ids with the widest prefix supports, a special id, ignored positions."""
    width = tables[('prefix_simple', 'inclusive')].width
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[: n // 2] = torch.argsort(width, descending=True)[: n // 2]
    special = [s for s in sorted(specials) if s < vocab]
    if special:
        labels[n // 2] = special[0]
    labels[n // 2 + 1:: 5] = IGNORE
    return labels


def check_numerics(report: Report, tables: dict, vocab: int, specials: set[int], shapes: Shapes, device: str, liger) -> None:
    gen = torch.Generator().manual_seed(1)
    labels = numerics_labels(tables, vocab, specials, shapes.numerics_rows, gen)
    std_h, std_w = input_stds('head', shapes.numerics_hidden)
    hidden = (std_h * torch.randn(shapes.numerics_rows, shapes.numerics_hidden, generator=gen, dtype=torch.float64)).to(device)
    weight = (std_w * torch.randn(vocab, shapes.numerics_hidden, generator=gen, dtype=torch.float64)).to(device)
    labels = labels.to(device)
    chunk = max(1, shapes.numerics_rows // 5)  # several chunks, the last one partial
    rows = []
    for objective, support in SPECS:
        targets = tables[(objective, support)].lookup(labels, IGNORE)
        reference = dense_reference(hidden, weight, labels, targets)
        for path in ('logits', 'fused'):
            for dtype, autocast in (('float32', None), ('bfloat16', torch.bfloat16)):
                result = run_path(path, hidden.float(), weight.float(), labels, targets, autocast, chunk if path == 'fused' else None)
                errors = errors_against(result, reference)
                rows.append({'objective': objective, 'support': support, 'path': path, 'dtype': dtype, **errors,
                             'bound': BOUNDS[dtype], 'ok': max(errors.values()) <= BOUNDS[dtype]})
        if objective == 'ce' and liger[0] is not None:
            ce_rows = {'objective': 'ce', 'support': support, 'path': f'liger {liger[1]}', 'dtype': 'bfloat16'}
            errors = errors_against(run_liger(liger[0], hidden.float(), weight.float(), labels, 0.0), reference)
            rows.append({**ce_rows, **errors, 'bound': BOUNDS['bfloat16'], 'ok': max(errors.values()) <= BOUNDS['bfloat16']})
    report.data['numerics'] = rows
    print_table(f'numerics: max relative error vs float64 dense reference ({shapes.numerics_rows} real-vocabulary rows, V={vocab}, d={shapes.numerics_hidden})',
                rows, ['objective', 'support', 'path', 'dtype', 'loss', 'nll', 'grad_hidden', 'grad_weight', 'grad_logits', 'bound', 'ok'])
    worst = max(max(v for k, v in r.items() if k in ('loss', 'nll', 'grad_hidden', 'grad_weight', 'grad_logits')) / r['bound'] for r in rows)
    report.goal('numerics', 'worst relative error / its bound, all paths', worst, 1.0, 'max')
    report.save()
    if not all(r['ok'] for r in rows):
        bad = [f"{r['objective']}/{r['support']}/{r['path']}/{r['dtype']}" for r in rows if not r['ok']]
        raise SystemExit(f'numerics: {", ".join(bad)} exceed their bounds; no timing was run (details in {report.path}).')


def run_liger(loss_class, hidden, weight, labels, label_smoothing: float) -> dict:
    """Liger's fused linear CE, fwd+bwd under bf16 autocast: loss and gradients w.r.t. h and W."""
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    with torch.autocast(hidden.device.type, dtype=torch.bfloat16):
        loss = loss_class(ignore_index=IGNORE, label_smoothing=label_smoothing)(w, h, labels)
    loss.backward()
    return {'loss': loss.detach(), 'grad_hidden': h.grad, 'grad_weight': w.grad}


# ----------------------------------------------------------------------------- loss level

def measure(methods: dict, inputs: list[torch.Tensor], stds: list[float], repeats: int, device: str) -> dict:
    """{name: {'time_s': median fwd+bwd seconds, 'peak_gb': peak allocated above the inputs (CUDA)}};
    one untimed call per method measures its peak, then ``repeats`` rounds interleave the methods."""
    results, times = {}, {}
    for name, run in methods.items():
        refill_inputs(inputs, stds, device)
        if device == 'cuda':
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device == 'cuda' else 0
        try:
            run(*inputs)
            sync(device)
        except torch.cuda.OutOfMemoryError:
            results[name] = {'time_s': None, 'peak_gb': None, 'note': 'out of memory'}
            continue
        peak = (torch.cuda.max_memory_allocated() - base) / 1e9 if device == 'cuda' else None
        results[name] = {'peak_gb': peak}
        times[name] = []
    for _ in range(repeats):
        for name in times:
            refill_inputs(inputs, stds, device)
            start = time.perf_counter()
            methods[name](*inputs)
            sync(device)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        results[name]['time_s'] = statistics.median(values)
    for x in inputs:
        x.grad = None
    return results


def fused_method(labels: torch.Tensor, targets: SparseTargets, device: str, chunk: int | None = None):
    """fwd+bwd of our fused head+loss on (h, W) under bf16 autocast; ``chunk``: tokens per chunk."""
    def run(h, w):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss, _ = fused_linear_soft_target_cross_entropy(h, w, labels, targets, IGNORE, chunk)
        loss.backward()
    return run


def loss_methods(labels: torch.Tensor, targets: dict[str, SparseTargets], device: str, liger) -> dict:
    """fwd+bwd callables on (h, W) under bf16 autocast, by name: ours fused for every objective, the
    HF path (bf16 logits, then our loss), ``F.cross_entropy`` on float32 copies of the logits (as HF's
    loss upcasts) and Liger, for ``ce`` and label smoothing (torch's and Liger's eps/V convention)."""
    amp = lambda: torch.autocast(device, dtype=torch.bfloat16)  # noqa: E731
    smoothing = benchmark_spec('label_smoothing').eps

    def hf(h, w):
        with amp():
            loss, _ = soft_target_cross_entropy(h @ w.t(), labels, targets['ce'], IGNORE)
        loss.backward()

    def torch_ce(eps):
        def run(h, w):
            with amp():
                z = h @ w.t()
            F.cross_entropy(z.float(), labels, ignore_index=IGNORE, label_smoothing=eps).backward()
        return run

    def liger_ce(eps):
        def run(h, w):
            with amp():
                loss = liger[0](ignore_index=IGNORE, label_smoothing=eps)(w, h, labels)
            loss.backward()
        return run

    methods = {f'fused {o}': fused_method(labels, t, device) for o, t in targets.items()}
    methods.update({'hf ce': hf, 'F.cross_entropy ce': torch_ce(0.0), 'F.cross_entropy label_smoothing': torch_ce(smoothing)})
    if liger[0] is not None:
        methods.update({'liger ce': liger_ce(0.0), 'liger label_smoothing': liger_ce(smoothing)})
    return methods


def head_inputs(n: int, d: int, vocab: int, tables: dict, objectives, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[::97] = IGNORE
    labels = labels.to(device)
    targets = {o: tables[(o, 'inclusive')].lookup(labels, IGNORE) for o in objectives}
    inputs = [torch.empty(shape, device=device).requires_grad_() for shape in ((n, d), (vocab, d))]
    return labels, targets, inputs, input_stds('head', d)


def loss_section(report: Report, tables: dict, vocab: int, shapes: Shapes, device: str, liger, repeats: int) -> None:
    for n in shapes.loss_tokens:
        for d in shapes.loss_hidden:
            labels, targets, inputs, stds = head_inputs(n, d, vocab, tables, OBJECTIVES, device)
            results = measure(loss_methods(labels, targets, device, liger), inputs, stds, repeats, device)
            base = results['fused ce']
            rows = [{'N': n, 'd': d, 'method': name, **r, 'time_vs_fused_ce': ratio(r['time_s'], base['time_s']),
                     'peak_vs_fused_ce': ratio(r['peak_gb'], base['peak_gb'])} for name, r in results.items()]
            report.data['loss'] += rows
            print_table(f'loss level fwd+bwd, N={n}, d={d}, V={vocab}, bf16 autocast (peak: allocated above the inputs)', rows,
                        ['method', 'time_s', 'peak_gb', 'time_vs_fused_ce', 'peak_vs_fused_ce', 'note'])
            for o in PREFIX_OBJECTIVES:
                report.goal('loss', f'fused {o} / fused ce time, N={n} d={d}', ratio(results[f'fused {o}']['time_s'], base['time_s']),
                            GOALS['prefix_vs_ce_time'], 'max')
            for o in ('ce', 'label_smoothing'):
                ours, theirs = results[f'fused {o}'], results.get(f'liger {o}', {})
                report.goal('loss', f'fused {o} / liger {o} time, N={n} d={d}', ratio(ours['time_s'], theirs.get('time_s')),
                            GOALS['ce_vs_liger_time'], 'max')
                report.goal('loss', f'fused {o} / liger {o} peak, N={n} d={d}', ratio(ours['peak_gb'], theirs.get('peak_gb')),
                            GOALS['ce_vs_liger_peak'], 'max')
            del labels, targets, inputs
            report.save()


def chunk_section(report: Report, tables: dict, vocab: int, shapes: Shapes, device: str, repeats: int) -> None:
    n = max(shapes.loss_tokens)
    default = fused_chunk_tokens(vocab)
    chunks = tuple(sorted(set(shapes.chunks) | {default}))
    for d in shapes.loss_hidden:
        labels, targets, inputs, stds = head_inputs(n, d, vocab, tables, ['ce'], device)
        methods = {c: fused_method(labels, targets['ce'], device, c) for c in chunks}
        timed = {c: r for c, r in measure(methods, inputs, stds, repeats, device).items() if r['time_s'] is not None}
        best = min(timed, key=lambda c: timed[c]['time_s'])
        rows = [{'N': n, 'd': d, 'chunk_tokens': c, 'default': c == default, 'best': c == best, **timed[c],
                 'time_vs_best': timed[c]['time_s'] / timed[best]['time_s']} for c in sorted(timed)]
        report.data['chunks'] += rows
        print_table(f'chunk sweep: fused ce, N={n}, d={d}, V={vocab}, bf16 autocast (default {default} tokens = 2^27 logits / V)',
                    rows, ['chunk_tokens', 'default', 'best', 'time_s', 'peak_gb', 'time_vs_best'])
        report.goal('chunks', f'default chunk {default} / best chunk {best} time, d={d}',
                    ratio(timed.get(default, {}).get('time_s'), timed[best]['time_s']), 1.05, 'max')
        del labels, targets, inputs
        report.save()


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# ----------------------------------------------------------------------------- training

def train_steps(model, optimizer, table: TargetTable, impl: str, micro_batch: int, seq_len: int, vocab: int,
                steps: int, device: str, gen: torch.Generator) -> float:
    """Seconds of ``steps`` optimizer steps on random ids: bf16 autocast forward + our loss (the
    model's ``loss_impl`` paths: ``fused`` runs the tied head inside the loss), backward, AdamW."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (micro_batch, seq_len), generator=gen).to(device)
        labels = next_token_labels(ids).reshape(-1)
        targets = table.lookup(labels, IGNORE)
        with torch.autocast(device, dtype=torch.bfloat16):
            if impl == 'fused':
                hidden = model.model(input_ids=ids).last_hidden_state
                loss, _ = fused_linear_soft_target_cross_entropy(hidden.reshape(labels.numel(), -1), model.lm_head.weight, labels, targets, IGNORE)
            else:
                loss, _ = soft_target_cross_entropy(model(input_ids=ids).logits.reshape(labels.numel(), -1), labels, targets, IGNORE)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def largest_micro_batch(model, optimizer, table, impl, shapes: Shapes, vocab, device, gen) -> int | None:
    """The largest candidate micro-batch whose training step runs without CUDA out-of-memory."""
    fits = None
    for mb in shapes.micro_batches:
        try:
            train_steps(model, optimizer, table, impl, mb, shapes.seq_len, vocab, 1, device, gen)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            optimizer.zero_grad(set_to_none=True)
            if device == 'cuda':
                torch.cuda.empty_cache()
        fits = mb
    return fits


def train_section(report: Report, tables: dict, vocab: int, shapes: Shapes, device: str, flops_peak: float | None) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, path in BRIEF_YAMLS.items():
        config, micro_batch = brief_model_config(path, shapes.seq_len, shapes.model_override, shapes.vocab_limit)
        micro_batch = min(micro_batch, max(shapes.micro_batches))
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**config)).to(device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=device == 'cuda')
        params = flop_params(model)
        flops_seq = llm_foundry_flops_per_sequence(params, config['num_hidden_layers'], config['hidden_size'], shapes.seq_len)
        gen = torch.Generator().manual_seed(0)
        info = {'config': name, 'params_for_flops': params, 'flops_per_seq': flops_seq,
                'attn_implementation': model.config._attn_implementation, 'seq_len': shapes.seq_len}
        rows = []

        def timed(objective, impl, mb):
            table = tables[(objective, 'inclusive')]
            if device == 'cuda':
                torch.cuda.reset_peak_memory_stats()
            try:
                train_steps(model, optimizer, table, impl, mb, shapes.seq_len, vocab, shapes.warmup_steps, device, gen)
                seconds = train_steps(model, optimizer, table, impl, mb, shapes.seq_len, vocab, shapes.timed_steps, device, gen)
            except torch.cuda.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                return {**info, 'objective': objective, 'impl': impl, 'micro_batch': mb, 'note': 'out of memory'}
            tokens_s = mb * shapes.seq_len * shapes.timed_steps / seconds
            mfu = flops_seq * mb * shapes.timed_steps / seconds / flops_peak if flops_peak else None
            peak = torch.cuda.max_memory_allocated() / 1e9 if device == 'cuda' else None
            return {**info, 'objective': objective, 'impl': impl, 'micro_batch': mb, 'tokens_per_s': tokens_s, 'mfu': mfu, 'peak_gb': peak}

        for impl in ('fused', 'logits'):
            for objective in OBJECTIVES:
                rows.append(timed(objective, impl, micro_batch))
        speeds = {(r['objective'], r['impl']): r.get('tokens_per_s') for r in rows}
        for r in rows:
            r['vs_ce'] = ratio(r.get('tokens_per_s'), speeds[('ce', r['impl'])])
            r['vs_fused_ce'] = ratio(r.get('tokens_per_s'), speeds[('ce', 'fused')])
        for impl in ('fused', 'logits'):
            largest = largest_micro_batch(model, optimizer, tables[('ce', 'inclusive')], impl, shapes, vocab, device, gen)
            info[f'largest_micro_batch_{impl}'] = largest
            if largest and largest != micro_batch and impl == 'fused':
                rows.append({**timed('ce', impl, largest), 'note': 'largest micro-batch'})
        report.data['train'] += rows
        print_table(f'training {name}: {params / 1e6:.1f}M params (FLOP count), seq {shapes.seq_len}, bf16 autocast, '
                    f'{info["attn_implementation"]} attention, largest micro-batch fused {info["largest_micro_batch_fused"]}, '
                    f'logits {info["largest_micro_batch_logits"]} (of {list(shapes.micro_batches)})',
                    rows, ['objective', 'impl', 'micro_batch', 'tokens_per_s', 'vs_ce', 'vs_fused_ce', 'mfu', 'peak_gb', 'note'])
        for r in rows:
            if r['objective'] != 'ce' and r['micro_batch'] == micro_batch:
                report.goal('train', f'{name} {r["impl"]} {r["objective"]} / ce tokens/s', r.get('vs_ce'), GOALS['objective_vs_ce_tokens'], 'min')
        if name == MFU_CONFIG:
            best = max((r.get('mfu') or 0.0 for r in rows if r['objective'] == 'ce'), default=0.0)
            report.goal('train', f'{name} MFU, fused ce, best micro-batch', best if flops_peak else None, GOALS['mfu_500m'], 'min')
        del model, optimizer
        if device == 'cuda':
            torch.cuda.empty_cache()
        report.save()


# ----------------------------------------------------------------------------- main

def build_tables(pieces: list[bytes], specials: set[int]) -> dict:
    return {(o, s): build_target_table(pieces, specials, benchmark_spec(o, s)) for o, s in SPECS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--write-vocab', metavar='FILE', help='write the byte vocabulary of the packaged Llama-3 tokenizer and exit (CPU machine)')
    parser.add_argument('--vocab', metavar='FILE', help='byte-vocabulary file written by --write-vocab')
    parser.add_argument('--vendor', metavar='DIR', help='folder of pure-Python wheels to put on sys.path (liger-kernel)')
    parser.add_argument('--out', metavar='DIR', help='folder for gpu_check.json')
    parser.add_argument('--sections', nargs='*', default=list(SECTIONS), choices=SECTIONS, help='timed sections (numerics always run first)')
    parser.add_argument('--smoke', action='store_true', help='tiny shapes, runs on CPU')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--peak-tflops', type=float, help='bf16 peak of the GPU for MFU (default: H100/H200 SXM, 989.5)')
    args = parser.parse_args(argv)
    if args.write_vocab:
        from prefix_composer.objectives.vocab import token_byte_strings
        from prefix_composer.tokenizer import PackagedLlama3Tokenizer

        pieces, specials = token_byte_strings(PackagedLlama3Tokenizer())
        write_byte_vocab(args.write_vocab, pieces, specials)
        print(f'wrote {len(pieces)} pieces ({len(specials)} special) to {args.write_vocab}')
        return 0
    if not args.vocab or not args.out:
        parser.error('--vocab FILE and --out DIR are required (write FILE first with --write-vocab on a CPU machine)')
    if args.device == 'cpu' and not args.smoke:
        parser.error('the full check needs CUDA; on a CPU use --smoke')
    if args.repeats < 1:
        parser.error('--repeats must be >= 1')
    started = time.perf_counter()
    vendored = unpack_vendor(args.vendor) if args.vendor else []
    shapes = SMOKE if args.smoke else FULL
    pieces, specials = read_byte_vocab(args.vocab)
    if shapes.vocab_limit:
        pieces, specials = pieces[: shapes.vocab_limit], {s for s in specials if s < shapes.vocab_limit}
    vocab = len(pieces)
    liger = load_liger(args.device)
    import transformers

    meta = {'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), 'argv': sys.argv if argv is None else argv,
            'device': torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu', 'torch': torch.__version__,
            'transformers': transformers.__version__, 'liger': liger[1], 'vendored': vendored, 'vocab': vocab,
            'smoke': args.smoke, 'repeats': args.repeats}
    report = Report(args.out, meta)
    print(' '.join(f'{k}={v}' for k, v in meta.items() if k != 'argv'), flush=True)
    t = time.perf_counter()
    tables = {key: table.to(args.device) for key, table in build_tables(pieces, specials).items()}
    report.data['seconds']['tables'] = time.perf_counter() - t
    steps = [('numerics', lambda: check_numerics(report, tables, vocab, specials, shapes, args.device, liger)),
             ('loss', lambda: loss_section(report, tables, vocab, shapes, args.device, liger, args.repeats)),
             ('chunks', lambda: chunk_section(report, tables, vocab, shapes, args.device, args.repeats)),
             ('train', lambda: train_section(report, tables, vocab, shapes, args.device, peak_flops(args.device, args.peak_tflops)))]
    for name, step in steps:
        if name == 'numerics' or name in args.sections:
            t = time.perf_counter()
            step()
            report.data['seconds'][name] = time.perf_counter() - t
            report.save()
    report.data['seconds']['total'] = time.perf_counter() - started
    report.save()
    print_table(f'GPU check summary: goals as ratios within this run ({meta["device"]}, {meta["date_utc"]}; '
                f'sections took {", ".join(f"{k} {v:.0f}s" for k, v in report.data["seconds"].items())}); JSON: {report.path}',
                report.data['goals'], ['section', 'item', 'value', 'goal', 'ok'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
