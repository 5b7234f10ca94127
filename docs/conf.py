"""Sphinx configuration: the reference pages (Markdown, via MyST) and the API reference
generated from the docstrings (Google style, via napoleon).

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html
"""
from odamtrain.version import __version__

project = 'odamtrain'
copyright = 'the odamtrain authors'  # noqa: A001  (Sphinx's name)
release = version = __version__

extensions = ['sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'myst_parser']
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'runs', '**/*.json']

# Markdown: GitHub-style heading anchors, so that page.md#a-heading links work here too.
myst_heading_anchors = 3

# The API: documented where defined, members in source order, signatures without the
# annotations' long unions (types are in the docstrings).
autodoc_default_options = {'members': True, 'member-order': 'bysource'}
autodoc_typehints = 'none'
autodoc_class_signature = 'separated'
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = 'alabaster'
html_title = f'odamtrain {release}'


def _skip_foreign(app, what, name, obj, skip, options):
    """Leave out members that are mmdet's own functions held by an adapter (e.g. a head's
    ``forward`` kept as a class attribute): they are documented by mmdet."""
    module = getattr(getattr(obj, '__func__', obj), '__module__', None) or ''
    if callable(obj) and module and not module.startswith('odamtrain'):
        return True
    return skip


def setup(app):
    app.connect('autodoc-skip-member', _skip_foreign)
