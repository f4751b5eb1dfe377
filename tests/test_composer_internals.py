"""Composer internals this project relies on are those of the pinned Composer 0.32.1 (and one of Streaming).

Each entry of ``INTERNALS`` is code of Composer (its signature is part of the hashed source) that the project overrides, replaces or depends on
beyond the documented API (docs/preemption.md, "Composer internals this project relies on"). A
Composer upgrade that changes one fails here with what to re-check, instead of silently breaking
atomic checkpoints, preemption or the launcher. After re-checking, update the hash.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect

import composer
import pytest

PINNED = '0.32.1'

INTERNALS = [  # (dotted name, sha256 of its source in Composer 0.32.1, what depends on it)
    ('composer.callbacks.checkpoint_saver.CheckpointSaver._save_checkpoint',
     '2f1b5899b0e325bd099f521d56163201cb9a1cefea7369f22a5b946f18a3d1f6',
     'runtime/checkpoints.AtomicCheckpointSaver overrides it (atomic save, folder-wide retention) and '
     'runtime/preemption.GracefulPreemption calls it to save the preemption checkpoint'),
    ('composer.callbacks.checkpoint_saver.CheckpointSaver.__init__',
     'e0762d67289b1017234e128ff0c20e0b2203ab5d74a870d250d93b2a218266b1',
     'AtomicCheckpointSaver reads and writes the fields it sets (filename, latest_filename, remote_uploader, '
     'num_checkpoints_to_keep, weights_only, ignore_keys, last_checkpoint_batch, saved_checkpoints, '
     'all_saved_checkpoints_to_timestamp); GracefulPreemption swaps the class of the Trainer\'s instance'),
    ('composer.callbacks.checkpoint_saver.CheckpointSaver.batch_checkpoint',
     '68a12f46ece3b5a372cbf7be9916fd79805f78afe8f0a5487135adb667a2e0da',
     'interval saves reach AtomicCheckpointSaver._save_checkpoint through it; GracefulPreemption skips its own '
     'save when last_checkpoint_batch is this batch'),
    ('composer.models.huggingface.HuggingFaceModel.get_metadata',
     'a041198d746b24dd5208cd474328699cd0462d1e776b36acf50958a0d587c5c2',
     'training/model.PrefixLlamaForCausalLM computes it once per run and reuses it at every checkpoint, which '
     'holds while it depends on the model config and the tokenizer alone'),
    ('composer.utils.dist.get_node_signal_file_name',
     '2f0ed21f67cf1efbb77e8ce893d5572324a7fdae9aa1c5fae5f2362f59a95f6c',
     'runtime/multinode.install_node_signal_file_name replaces it (a per-node name on a shared volume)'),
    ('composer.cli.launcher.main',
     'cbf66e8dc49c50c0494c86c2852d9b36d3de8edfc65dd852ce4d05da3fa12ea6',
     'runtime/launcher runs it with its own SIGTERM handler and relies on it returning the ranks\' exit code'),
    ('composer.cli.launcher._monitor_processes',
     '1f341ba191b851d579ecedbad506a08fb454e912875083572ffbb6d853082d4e',
     'runtime/launcher relies on it waiting, with no time limit, until every rank has exited (0 after a preemption)'),
    ('composer.core.engine.sigterm_handler',
     '1ca25b650c287d1b88635f1bfa6cbad8ec108b942f9cd2e6f3999a7decf55d36',
     'the handler GracefulPreemption replaces in the ranks and runtime/launcher replaces in the launcher'),
    ('streaming.base.shared.prefix.get_shm_prefix',
     'df1d1d0a0cbbac9167f5a5684131c37d06ac673f44d343a27691c7e30ffa7cc3',
     'runtime/shared_memory.install_serialized_registration wraps it (Streaming 0.12.0, uv.lock) under a /dev/shm lock '
     'and replaces streaming.base.dataset.get_shm_prefix; re-check that it still registers <prefix>_locals by '
     'check-then-create, takes (streams_local, streams_remote, world) and that StreamingDataset looks it up there'),
    ('composer.utils.misc.create_interval_scheduler',
     '4058aecbdd746da19e0fd8d17b26c8b1068dc6d9ab3b3e3e7171036ed5538ce0',
     'runtime/config_checks.check_durations refuses the intervals it never fires (<= 0) and says so'),
]


def pristine_source(dotted: str) -> str:
    """The source of ``dotted`` as its module's file defines it (decorators included, as ``inspect.getsource``
    gives it), read from the file rather than from the attribute, which the project may have replaced in this
    process (runtime/multinode installs its own ``get_node_signal_file_name`` when a run starts)."""
    parts = dotted.split('.')
    for split in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module('.'.join(parts[:split]))
        except ImportError:
            continue
        lines = inspect.getsource(module).splitlines(keepends=True)
        body = ast.parse(''.join(lines)).body
        for name in parts[split:]:
            node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name), None)
            if node is None:
                raise AttributeError(f'{name} is not defined in {module.__name__}')
            body = node.body
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        return ''.join(lines[first - 1:node.end_lineno])
    raise ImportError(dotted)


def test_composer_is_the_pinned_version():
    assert composer.__version__ == PINNED, (
        f'Composer {composer.__version__} is installed, the project is pinned to {PINNED}: re-check every entry of '
        'docs/preemption.md, "Composer internals this project relies on", then update PINNED and the hashes here.')


@pytest.mark.parametrize('name, digest, relies', INTERNALS, ids=[n for n, _, _ in INTERNALS])
def test_composer_internal_is_unchanged(name, digest, relies):
    try:
        source = pristine_source(name)
    except (ImportError, AttributeError) as e:
        pytest.fail(f'{name} no longer exists in Composer {composer.__version__} ({e}); {relies}.')
    got = hashlib.sha256(source.encode()).hexdigest()
    assert got == digest, (
        f'{name} changed since Composer {PINNED} (source sha256 {got}, pinned {digest}): {relies}. Re-check that code '
        'against the new version (docs/preemption.md, "Composer internals this project relies on"), then update the hash.')
