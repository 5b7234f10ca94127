"""The README and the reference pages: every relative link and anchor resolves; the
Sphinx build (pages + API reference) is warning-free and covers every module."""
import os
import re
import subprocess
import sys

from .conftest import REPO

DOCS = ['README.md', 'CHANGELOG.md'] + sorted(
    f'docs/{f}' for f in os.listdir(os.path.join(REPO, 'docs')) if f.endswith('.md'))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _headings(path: str) -> set:
    with open(path, encoding='utf-8') as f:
        return {_anchor(m.group(1)) for m in re.finditer(r'(?m)^#+ (.*)$', f.read())}


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for doc in DOCS:
        path = os.path.join(REPO, doc)
        with open(path, encoding='utf-8') as f:
            text = re.sub(r'```.*?```', '', f.read(), flags=re.S)  # (code is not linked)
        for link in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+://', link):
                continue
            file, _, anchor = link.partition('#')
            target = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(target):
                broken.append(f'{doc}: {link} (no such file)')
            elif anchor and target.endswith('.md') and anchor not in _headings(target):
                broken.append(f'{doc}: {link} (no such heading)')
    assert not broken, '\n'.join(broken)


def _package_modules() -> set:
    modules = set()
    for root, _, files in os.walk(os.path.join(REPO, 'odamtrain')):
        for f in files:
            if f.endswith('.py'):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, '.')
                modules.add(rel.removesuffix('.__init__'))
    return modules


def test_api_reference_documents_every_module():
    """Every module with code a user calls has its page; the re-exporting packages and the
    version are the exceptions (their names are documented where defined)."""
    api = os.path.join(REPO, 'docs', 'api')
    documented = set()
    for f in os.listdir(api):
        with open(os.path.join(api, f), encoding='utf-8') as page:
            documented |= set(re.findall(r'^\.\. automodule:: (\S+)$', page.read(), re.M))
    reexporting = {'odamtrain', 'odamtrain.apis', 'odamtrain.datasets', 'odamtrain.engine',
                   'odamtrain.evaluation', 'odamtrain.evaluation.functional',
                   'odamtrain.evaluation.metrics', 'odamtrain.explain', 'odamtrain.inference',
                   'odamtrain.models', 'odamtrain.structures', 'odamtrain.utils',
                   'odamtrain.visualization', 'odamtrain.version'}
    assert documented - _package_modules() == set()
    assert _package_modules() - reexporting - documented == set()


def test_docs_build_without_warnings(tmp_path):
    """The reference pages and the API reference build with Sphinx, warnings as errors (a
    docstring that does not parse, a broken cross-reference or heading fails here)."""
    build = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-E', '-W', '--keep-going', '-q', '-b', 'html',
         '-d', str(tmp_path / 'doctrees'), os.path.join(REPO, 'docs'), str(tmp_path / 'html')],
        capture_output=True, text=True, cwd=REPO)
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / 'html' / 'api' / 'explain.html').exists()
