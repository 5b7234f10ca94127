"""The README and the reference pages: every relative link and anchor resolves."""
import os
import re

from .conftest import REPO

DOCS = ['README.md'] + sorted(f'docs/{f}' for f in os.listdir(os.path.join(REPO, 'docs'))
                              if f.endswith('.md'))


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
