"""Every dotted ``prefix_composer.`` path, every repository file path and every relative markdown
link in the repository's prose resolves: a module path names a module of the package (``find_spec``),
a ``module.name`` path a name that module defines, a file path or link an existing file. Module
sources are read, not imported, so the check is cheap; it is itself tested on planted stale paths."""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The prose that names modules: docs, READMEs, YAML comments, scripts, the Run:ai files, the Dockerfile,
# train.py and the package's own docstrings.
CHECKED_GLOBS = ('README.md', 'docs/*.md', 'prefix_composer/**/*.md', 'prefix_composer/**/*.py', 'yamls/**/*.yaml',
                 'yamls/**/*.md', 'runai/*', 'scripts/*.py', 'Dockerfile', 'train.py')
# A dotted path; one followed by ``/``, ``-`` or a quote is a format tag, a folder name or a string value
# (``prefix_composer.mds/2``, ``'prefix_composer.lm_eval_records'``), not a module.
DOTTED = re.compile(r'(?<![\w.])prefix_composer(?:\.[A-Za-z_]\w*)+(?![\w/\'"-])')
# A file of the repository named by its path from the root (or from the mentioning file's folder).
FILE_PATH = re.compile(r'(?<![\w./<>-])((?:docs|scripts|runai|yamls|tests|prefix_composer)/[\w./-]*\w'
                       r'\.(?:md|py|yaml|sh|png|json|jsonl))(?![\w/<>])')
# [text](target) with a target that is neither a URL nor an anchor of the same page.
LINK = re.compile(r'\[[^\]]*\]\((?![a-z]+://|mailto:|#)([^)\s]+)\)')


def checked_files() -> list[Path]:
    return sorted({p for pattern in CHECKED_GLOBS for p in REPO.glob(pattern) if p.is_file()})


@functools.lru_cache(maxsize=None)
def module_spec(name: str):
    """The spec of module ``name`` of the package, found without importing any of its subpackages."""
    spec = importlib.util.find_spec('prefix_composer')
    for part in name.split('.')[1:]:
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    return spec


@functools.lru_cache(maxsize=None)
def module_tree(origin: str) -> ast.Module:
    return ast.parse(Path(origin).read_text(), filename=origin)


def defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names bound at the level of ``body``: functions, classes, assignments, imports."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names[leaf.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split('.')[0]] = node
    return names


def resolves(dotted: str) -> bool:
    """``dotted`` is a module of the package, or a module followed by names it defines (a class's
    members included); a name imported into the module counts as defined there."""
    parts = dotted.split('.')
    for cut in range(len(parts), 0, -1):
        spec = module_spec('.'.join(parts[:cut]))
        if spec is None:
            continue
        node: ast.AST = module_tree(spec.origin) if spec.origin and spec.origin.endswith('.py') else None
        for name in parts[cut:]:
            body = getattr(node, 'body', None)
            if not isinstance(body, list) or name not in defined_names(body):
                return False
            node = defined_names(body)[name]
        return True
    return False


def stale_references(path: Path) -> list[str]:
    """``'<file>:<line>: <what>'`` for each dotted path that does not resolve, each file path and
    each relative markdown link whose file does not exist."""
    out = []
    for number, line in enumerate(path.read_text(errors='replace').splitlines(), start=1):
        where = f'{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}'
        out += [f'{where}: {m}' for m in DOTTED.findall(line) if not resolves(m)]
        out += [f'{where}: file {m}' for m in FILE_PATH.findall(line)
                if not ((REPO / m).exists() or (path.parent / m).exists())]
        if path.suffix == '.md':
            for target in LINK.findall(line):
                file = target.split('#', 1)[0]
                if file and not (path.parent / file).exists():
                    out.append(f'{where}: link {target}')
    return out


def test_every_dotted_path_and_link_in_the_repository_resolves():
    files = checked_files()
    assert REPO / 'docs' / 'design.md' in files and REPO / 'Dockerfile' in files and REPO / 'runai' / 'submit_train.sh' in files
    stale = [s for f in files for s in stale_references(f)]
    assert not stale, 'stale references (rename them to the current module or file):\n' + '\n'.join(stale)


@pytest.mark.parametrize('text, stale', [
    ('see `prefix_composer.targets.strict_prefix_ids`\n', ['prefix_composer.targets.strict_prefix_ids']),
    ('# callback: prefix_composer.lm_eval_callback\n', ['prefix_composer.lm_eval_callback']),
    ('`prefix_composer.objectives.targets.no_such_function`\n', ['prefix_composer.objectives.targets.no_such_function']),
    ('`prefix_composer.runtime.experiment.EXPERIMENT_KEYS`, prefix_composer.training.model.'
     'PrefixLlamaForCausalLM.loss, prefix_composer.losses.soft_target_cross_entropy, prefix_composer.objectives\n', []),
    ('format "prefix_composer.mds/2", prefix_composer.egg-info, RECORDS = \'prefix_composer.lm_eval_records\'\n', []),
    ('How to read it: ``docs/results.md``; the method: ``prefix_composer/analysis/report.py``\n',
     ['file docs/results.md']),
    ('How to read it: [the results](results.md), [design](design.md#seed-replicas), <https://x.org/a.md>\n',
     ['link results.md']),
])
def test_the_checker_finds_a_planted_stale_path(tmp_path, text, stale):
    planted = tmp_path / 'docs' / 'planted.md'
    planted.parent.mkdir()
    (tmp_path / 'docs' / 'design.md').write_text('# Design\n')
    planted.write_text(text)
    assert [s.split(': ', 1)[1] for s in stale_references(planted)] == stale
