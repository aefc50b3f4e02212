"""Names of a package imported on first use (PEP 562), so that importing the package
costs nothing until a name is used."""

import importlib
from typing import Callable, Dict


def lazy_getattr(package: str, names: Dict[str, str], namespace: dict) -> Callable:
    """A module ``__getattr__`` for ``package``: ``names`` maps each public name to the
    module defining it; a name is imported once, then cached in ``namespace``."""

    def __getattr__(name):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
