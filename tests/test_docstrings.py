"""The public API's docstrings in one format (Google style, as the API reference renders
them): every function and class a subpackage exports has a docstring whose ``Args:`` names
exactly its parameters, and a ``Returns:`` / ``Yields:`` section when it returns a value."""
import dataclasses
import importlib
import inspect
import re

import pytest

PACKAGES = ['odamtrain.apis', 'odamtrain.datasets', 'odamtrain.engine', 'odamtrain.evaluation',
            'odamtrain.evaluation.functional', 'odamtrain.explain', 'odamtrain.explain.adapters',
            'odamtrain.inference', 'odamtrain.models', 'odamtrain.structures', 'odamtrain.utils',
            'odamtrain.visualization']
# Concrete detector adapters implement the protocol's methods (documented on
# DetectorAdapter); their own helpers are checked with their class docstrings only.
ADAPTER_MODULES = ('odamtrain.explain.adapters.',)


def _public_api():
    seen, items = set(), []
    for name in PACKAGES:
        package = importlib.import_module(name)
        for export in package.__all__:
            obj = getattr(package, export)
            if id(obj) in seen or not getattr(obj, '__module__', '').startswith('odamtrain'):
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj):
                items.append((f'{obj.__module__}.{export}', obj))
            elif inspect.isclass(obj):
                items.append((f'{obj.__module__}.{export}', obj))
                if obj.__module__.startswith(ADAPTER_MODULES):
                    continue
                for attr, member in vars(obj).items():
                    inherited = any(attr in vars(base) for base in obj.__mro__[1:])
                    if (not attr.startswith('_') and inspect.isfunction(member)
                            and not inherited):
                        items.append((f'{obj.__module__}.{export}.{attr}', member))
    return items


def _section(doc: str, title: str):
    match = re.search(rf'^{title}:\n((?:(?:[ ]{{4}}.*)?\n?)*)', doc, re.M)
    if not match:
        return None
    return {m.group(1) for m in re.finditer(r'^    \**(\w+)(?: \([^)]*\))?:', match.group(1), re.M)}


def _parameters(obj):
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            return [f.name for f in dataclasses.fields(obj) if f.init]
        if '__init__' not in vars(obj):
            return []
        base_init = next(b.__init__ for b in obj.__mro__[1:] if '__init__' in vars(b))
        if inspect.signature(base_init) == inspect.signature(obj.__init__):
            return []  # extends its base's constructor, documented there
        obj = obj.__init__
    return [p.name for p in inspect.signature(obj).parameters.values()
            if p.name not in ('self', 'cls') and p.kind is not p.VAR_POSITIONAL]


def _problems(qualname, obj):
    doc = inspect.getdoc(obj)
    if not doc:
        return ['no docstring']
    problems = []
    params = _parameters(obj)
    documented = _section(doc, 'Args')
    if dataclasses.is_dataclass(obj) and documented is None:
        documented = _section(doc, 'Attributes')
    if params and documented is None:
        problems.append(f'no Args section for {params}')
    elif documented is not None:
        missing = [p for p in params if p not in documented]
        extra = sorted(documented - set(params))
        if missing:
            problems.append(f'Args misses {missing}')
        if extra:
            problems.append(f'Args names {extra}, not parameters')
    if inspect.isfunction(obj):
        returns = inspect.signature(obj).return_annotation
        if returns not in (None, 'None') and not re.search(r'^(Returns|Yields):', doc, re.M):
            problems.append('no Returns section')
    return problems


@pytest.mark.parametrize('qualname,obj', _public_api(),
                         ids=lambda v: v if isinstance(v, str) else '')
def test_public_docstring_format(qualname, obj):
    assert not _problems(qualname, obj), f'{qualname}: {_problems(qualname, obj)}'
