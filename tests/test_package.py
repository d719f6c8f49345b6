"""The package's public API, as `from condense import ...` gives it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import condense


def test_every_export_is_the_object_named_even_after_every_module_is_imported():
    """`from condense import train` gave the module condense.train, not the function the
    package docstring calls, once anything had imported that module (bench did)."""
    for info in pkgutil.iter_modules(condense.__path__):
        importlib.import_module(f"condense.{info.name}")
    for name in condense.__all__:
        exported = getattr(condense, name)
        assert not inspect.ismodule(exported), name
        assert exported.__name__ == name
    from condense import train

    assert next(iter(inspect.signature(train).parameters)) == "cfg"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        condense.no_such_name  # noqa: B018
