"""The Dockerfile, read as text (no registry or Docker daemon here): what it installs, copies and runs as.

"The same install as the README's" means: the README's ``uv sync --extra mlflow`` plus ``--frozen`` (the lock
as committed, never re-resolved) and ``--no-dev`` (no pytest, no packaged offline tokenizer), and
nothing else; the dependency layer adds only ``--no-install-project``. runai/README.md shows the
image's uv commands verbatim.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / 'Dockerfile').read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    logical = re.sub(r'\\\n', ' ', '\n'.join(line for line in text.splitlines() if not line.lstrip().startswith('#')))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in logical.splitlines() if line.strip()]


def uv_commands(shell: str) -> list[list[str]]:
    """The ``uv ...`` commands of a shell line (split on && and ;), each as argv without options before uv."""
    commands = []
    for part in re.split(r'&&|;', shell):
        words = shlex.split(part)
        if 'uv' in words:
            commands.append(words[words.index('uv'):])
    return commands


def dockerfile_uv() -> list[list[str]]:
    return [cmd for op, args in instructions(DOCKERFILE) if op == 'RUN' for cmd in uv_commands(args)]


def readme_uv(path: Path) -> list[list[str]]:
    blocks = re.findall(r'```(?:bash|sh)\n(.*?)```', path.read_text(), flags=re.S)
    return [cmd for block in blocks for line in block.splitlines() for cmd in uv_commands(line.split('#')[0])]


def env_value(name: str) -> str:
    for op, args in instructions(DOCKERFILE):
        if op == 'ENV':
            match = re.search(rf'(?:^|\s){name}=(\S+)', args)
            if match:
                return match.group(1)
    raise AssertionError(f'{name} is not set by an ENV instruction')


def test_the_image_installs_the_readmes_environment_locked_and_without_dev():
    readme_syncs = [cmd for cmd in readme_uv(REPO / 'README.md') if cmd[:2] == ['uv', 'sync']]
    assert readme_syncs == [['uv', 'sync', '--extra', 'mlflow']]
    image_syncs = [cmd for cmd in dockerfile_uv() if cmd[:2] == ['uv', 'sync']]
    assert [set(cmd) for cmd in image_syncs] == [
        {'uv', 'sync', '--frozen', '--extra', 'mlflow', '--no-dev', '--no-install-project'},  # the cached dependency layer
        {'uv', 'sync', '--frozen', '--extra', 'mlflow', '--no-dev'},  # then the project itself
    ]
    assert env_value('UV_COMPILE_BYTECODE') == '1'


def test_runai_readme_shows_the_images_uv_commands():
    documented = readme_uv(REPO / 'runai' / 'README.md')
    image = dockerfile_uv()
    assert image == [['uv', 'python', 'install'], ['uv', 'sync', '--frozen', '--extra', 'mlflow', '--no-dev', '--no-install-project'],
                     ['uv', 'sync', '--frozen', '--extra', 'mlflow', '--no-dev']]
    assert all(cmd in documented for cmd in image), (image, documented)


def test_python_matches_the_project_and_the_lock():
    python = env_value('UV_PYTHON')
    requires = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['requires-python']
    locked = re.search(r'^requires-python = "(.+)"$', (REPO / 'uv.lock').read_text(), flags=re.M).group(1)
    assert python in SpecifierSet(requires) and python in SpecifierSet(locked)


def test_copied_paths_exist_and_are_not_ignored():
    ignored = [p.strip() for p in (REPO / '.dockerignore').read_text().splitlines() if p.strip() and not p.startswith('#')]
    sources = []
    for op, args in instructions(DOCKERFILE):
        if op == 'COPY' and '--from=' not in args:
            *srcs, _dest = [w for w in shlex.split(args) if not w.startswith('--')]
            sources += srcs
    assert {'pyproject.toml', 'uv.lock', 'train.py', 'prefix_composer/'} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f'COPY {src}: no such path'
        assert not any(fnmatch.fnmatch(src.rstrip('/'), pattern) for pattern in ignored), f'{src} is in .dockerignore'


def test_dockerignore_keeps_environment_history_runs_and_data_out():
    ignored = set((REPO / '.dockerignore').read_text().split())
    assert {'.venv', '.git', 'runs', 'data', '**/__pycache__', '.env'} <= ignored


def test_runs_as_a_numeric_non_root_user_in_the_workdir_of_the_scripts():
    users = [args for op, args in instructions(DOCKERFILE) if op == 'USER']
    assert users and users[-1].split(':')[0].isdigit() and users[-1].split(':')[0] != '0'
    submit = (REPO / 'runai' / 'submit_train.sh').read_text()
    workdir = re.search(r'^RUNAI_WORKDIR=\$\{RUNAI_WORKDIR:-(.+)\}$', submit, flags=re.M).group(1)
    assert [args for op, args in instructions(DOCKERFILE) if op == 'WORKDIR'] == [workdir]
    assert env_value('PATH').startswith(f'{workdir}/.venv/bin:')


def test_no_secret_is_baked_in():
    assert 'HF_TOKEN' not in DOCKERFILE
    names = [name for op, args in instructions(DOCKERFILE) if op in ('ARG', 'ENV') for name in re.findall(r'(\w+)=', args)]
    assert names and not [n for n in names if re.search('TOKEN|SECRET|PASSWORD|KEY', n)], names
