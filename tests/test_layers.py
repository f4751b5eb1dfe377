"""The package's layers import one way: a module never imports a module of a higher layer.

Layers, lowest first (``prefix_composer/README.md``): the shared foundation (``constants``,
``config``, ``files``, ``tokenizer``), ``objectives``, ``losses``, ``data``, ``training`` (Composer glue),
``evaluation``, ``runtime``, ``analysis``. The objectives and losses must also import without
Composer, llm-foundry, Streaming or lm-eval (the GPU check runs them on a machine without those).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'prefix_composer'
LAYERS = ['constants', 'config', 'files', 'tokenizer', 'objectives', 'losses', 'data', 'training', 'evaluation', 'runtime', 'analysis']
FOUNDATION = ('constants', 'config', 'files', 'tokenizer')
RANK = {name: (0 if name in FOUNDATION else LAYERS.index(name) - len(FOUNDATION) + 1) for name in LAYERS}
TRAINING_STACK = ('composer', 'llmfoundry', 'streaming', 'lm_eval')


def layer_of(module: str) -> str:
    """``prefix_composer.losses.fused`` -> ``losses``."""
    return module.split('.')[1]


def module_name(path: Path) -> str:
    """``.../prefix_composer/losses/fused.py`` -> ``prefix_composer.losses.fused`` (a package names its folder)."""
    parts = path.resolve().relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: Path, package_root: Path = PACKAGE.parent) -> list[str]:
    """Absolute module names imported anywhere in the file (function-level imports too).

    A relative import (``from ..training import model``) is resolved against the file's own
    package, so it is checked like the absolute spelling.
    """
    parts = path.resolve().relative_to(package_root.resolve()).with_suffix('').parts
    package = list(parts[:-1])  # the package a module's relative imports start from
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            if module:
                names.append(module)
                names += [f'{module}.{alias.name}' for alias in node.names]
    return names


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob('*.py')}


def test_every_module_belongs_to_a_layer():
    modules = [m for m in package_modules() if m != 'prefix_composer']
    assert modules and all(layer_of(m) in RANK for m in modules), sorted(m for m in modules if layer_of(m) not in RANK)


@pytest.mark.parametrize('module, path', sorted(package_modules().items()))
def test_imports_flow_downwards(module, path):
    if module == 'prefix_composer':
        return
    here = RANK[layer_of(module)]
    upward = [name for name in imported_modules(path) if name.startswith('prefix_composer.')
              and name.split('.')[1] in RANK and RANK[layer_of(name)] > here]
    assert not upward, f'{module} (layer {layer_of(module)}) imports higher layers: {upward}'


@pytest.mark.parametrize('module, path', sorted((m, p) for m, p in package_modules().items()
                                                if m.split('.')[1:2] in (['objectives'], ['losses'], ['constants'], ['files'], ['tokenizer'])))
def test_math_layers_import_without_the_training_stack(module, path):
    heavy = [name for name in imported_modules(path) if name.split('.')[0] in TRAINING_STACK]
    assert not heavy, f'{module} imports {heavy}'


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('def f():\n    from prefix_composer.training.model import PrefixLlamaForCausalLM\n')
    assert 'prefix_composer.training.model' in imported_modules(bad, tmp_path)
    assert RANK[layer_of('prefix_composer.training.model')] > RANK[layer_of('prefix_composer.losses.fused')]


def test_the_checker_resolves_relative_imports(tmp_path):
    module = tmp_path / 'prefix_composer' / 'losses' / 'bad.py'
    module.parent.mkdir(parents=True)
    module.write_text('from ..training.model import PrefixLlamaForCausalLM\nfrom . import rows\n')
    found = imported_modules(module, tmp_path)
    assert 'prefix_composer.training.model' in found and 'prefix_composer.losses.rows' in found


def test_scripts_never_import_the_tests():
    """Scripts may import the package, never a module of ``tests/`` (nor put that folder on the path)."""
    repo = Path(__file__).resolve().parent.parent
    test_modules = {p.stem for p in (repo / 'tests').glob('*.py')}
    offenders = []
    for script in sorted((repo / 'scripts').glob('*.py')):
        source = script.read_text()
        tree = ast.parse(source, filename=str(script))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f'{script.name} imports {n}' for n in names if n.split('.')[0] in test_modules]
        if "/ 'tests'" in source or "'tests')" in source:
            offenders.append(f'{script.name} puts tests/ on the path')
    assert not offenders, offenders
