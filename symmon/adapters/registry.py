"""The one place that decides how a model is evaluated on an orbit: the family registry.

Every front-end (the monitor, ``symmon eval``, ``symmon purify``, ``symmon layers``, the
i-PI client) hands what the user passed to :func:`orbit_model_for` (an adapter for the
orbit) or :func:`calculator_for` (the family's own ASE calculator). Each model family is
one module of :mod:`symmon.adapters` that registers a :class:`Family` at import: a
predicate that recognises the objects it evaluates (a calculator, a model object), one
that recognises its files, and the adapter to build. Nothing above this module names a
family. What the user passed may be

* an :class:`~symmon.adapters.base.OrbitModel` (used as it is);
* a model object or calculator a family recognises (a ``MetatomicCalculator``, an
  ``ORBCalculator``, a MACE model...);
* a file: an exported metatomic model (TorchScript ``.pt``), a metatrain checkpoint
  (``.ckpt``), or a ``torch.save``'d model object (``.pt``, ``.model``: unpickled with
  ``weights_only=False``, so only for files you trust) handed to the object rules;
* a Python entry point ``"module:function"`` returning a calculator or a model;
* a calculator that *holds* a family's calculator in one attribute (upet's
  ``UPETCalculator.calculator``): evaluated through the held one, batched, if on the
  first structure the wrapper returns the held calculator's predictions; else (it adds
  a dispersion term, a reference energy...) the wrapper itself, one ASE call per copy,
  with one warning. This is the one wrapper rule of every front-end;
* any other ASE calculator: one calculation per copy (:class:`~.ase.ASEOrbitModel`).

A family whose library is not installed is not recognised; asked for by name or by a
file only it reads, it gives one sentence naming the ``pip install`` that adds it
(:func:`require`). Adding a family: one module calling :func:`register`, its name in
:data:`FAMILY_MODULES`, its tests, one row of docs/compatibility.md.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..core.outputs import OUTPUTS
from ..extras import require  # noqa: F401 (families import it from here)
from .base import OrbitModel

#: modules of :mod:`symmon.adapters` that register a family, in the order they are asked
FAMILY_MODULES = ("metatomic", "metatrain", "orb", "mace", "torchsim")

#: ``package.module:function`` (an entry point on the command line)
ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

#: what :func:`orbit_model_for` can be asked to provide (``needs``), and who needs it
CAPABILITIES = {"features": ("has_features", "last-layer features",
                             "a metatomic model exported by metatrain (.pt)"),
                "layer_hooks": ("has_layer_hooks", "hooks on internal layers",
                                "a metatrain checkpoint (.ckpt)")}


@dataclass(frozen=True)
class Family:
    """One model family: what it recognises and how it is evaluated.

    :param name: the family's name (logs, docs/compatibility.md)
    :param recognises: ``obj -> bool``: a model object or calculator of this family
    :param build: ``(obj, **options) -> OrbitModel`` (options: ``device``,
        ``chunk_size`` and family-specific ones; unknown ones are ignored)
    :param opens: ``path -> bool``: a file this family reads itself (``build`` gets
        the path)
    :param calculator: ``(obj, device=None, non_conservative=False) -> calculator``:
        the family's own ASE calculator of a model object (for the monitor)
    :param opaque: ``obj -> bool``: calculators holding one of this family's that
        must never be looked through (their results are not the held one's)
    :param extra: the optional dependency group that installs the library
    :param library: the import name of that library
    """

    name: str
    recognises: Callable[[object], bool]
    build: Callable[..., OrbitModel]
    opens: Optional[Callable[[str], bool]] = None
    calculator: Optional[Callable[..., object]] = None
    opaque: Optional[Callable[[object], bool]] = None
    extra: Optional[str] = None
    library: Optional[str] = None


_FAMILIES: Dict[str, Family] = {}
_QUANTITY_OF_DIRECT = {name: o.quantity for name, o in OUTPUTS.items() if not o.conservative}
_loaded = False


def register(family: Family) -> Family:
    """Add ``family`` (a module calls this at import; a second call replaces it)."""
    _FAMILIES[family.name] = family
    return family


def families() -> List[Family]:
    """The registered families, in :data:`FAMILY_MODULES` order (then registration)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in FAMILY_MODULES:
            try:
                importlib.import_module(f"{__package__}.{name}")
            except ModuleNotFoundError as error:  # a family module not written (yet)
                if error.name != f"{__package__}.{name}":
                    raise
    return list(_FAMILIES.values())


def family(name: str) -> Family:
    for item in families():
        if item.name == name:
            return item
    raise KeyError(f"no model family {name!r}; known: {[f.name for f in families()]}")


def module_of(obj) -> str:
    """The top-level package of ``obj``'s class (recognising without importing it)."""
    return type(obj).__module__.split(".")[0]


# --------------------------------------------------------------------------------------
# what the user passed -> an object the families recognise
# --------------------------------------------------------------------------------------
def is_entry_point(text) -> bool:
    return isinstance(text, str) and bool(ENTRY_POINT.match(text)) and not os.path.exists(text)


def load_entry_point(text: str):
    """Call ``module:function`` (no arguments) and return what it returns."""
    module_name, _, attribute = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} of the entry point {text!r} "
                         f"({error}): is it on PYTHONPATH?") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"the entry point {text!r} names {attribute!r}, which "
                             f"{module_name!r} does not define")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"the entry point {text!r} is not callable: give a function "
                         "returning a calculator or a model")
    return target()


def _is_pickled_object(path: str) -> bool:
    """A ``torch.save``'d object (a zip with ``data.pkl`` and no TorchScript code)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return (any(name.endswith("/data.pkl") for name in names)
            and not any("/code/" in name for name in names))


def load_pickled_model(path: str):
    """The model object ``torch.save`` wrote to ``path`` (a file you trust)."""
    import torch

    try:  # e3nn 0.4.4 (MACE) torch.loads a slice at import: allowed for its import only
        with torch.serialization.safe_globals([slice]):
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - unpickling runs the file's own code
        first = next((line for line in str(error).splitlines() if line.strip()),
                     type(error).__name__)
        raise ValueError(f"cannot load model file {path!r} ({first}): is the library "
                         "that saved it installed?") from None
    if isinstance(obj, dict):
        raise ValueError(f"model file {path!r} holds a dict (a checkpoint or state_dict), "
                         "not a model: build the model and save the object itself "
                         "(torch.save(model, path)), export it, or give a Python entry "
                         "point 'module:function' that returns it")
    return obj


def _file_family(path: str) -> Optional[Family]:
    for item in families():
        if item.opens is not None and item.opens(path):
            return item
    return None


def _object_family(obj) -> Optional[Family]:
    for item in families():
        if item.recognises(obj):
            return item
    return None


def resolve(model):
    """``(family or None, obj)``: the family that reads ``model`` (a path or entry point
    loaded to an object first where no family reads the file itself)."""
    if isinstance(model, (str, os.PathLike)) and not is_entry_point(model):
        path = os.fspath(model)
        if os.path.isfile(path) and _is_pickled_object(path) and not path.endswith(".ckpt"):
            model = load_pickled_model(path)
        else:
            found = _file_family(path)
            if found is None:
                raise ValueError(f"no model family reads {path!r}: give a metatomic .pt, "
                                 "a metatrain .ckpt, a torch.save'd model or a Python "
                                 "entry point 'module:function'")
            return found, path
    elif is_entry_point(model):
        model = load_entry_point(model)
        if isinstance(model, (str, os.PathLike)):  # it named a file
            return resolve(model)
    return _object_family(model), model


def held_calculator(calculator):
    """``(attribute, family, held)``: a family's calculator held by ``calculator`` in one
    attribute (``None`` if none, or if some family marks ``calculator`` opaque)."""
    if not hasattr(calculator, "get_property"):
        return None
    known = families()
    if any(item.opaque is not None and item.opaque(calculator) for item in known):
        return None
    for attribute, value in getattr(calculator, "__dict__", {}).items():
        if value is calculator or not hasattr(value, "get_property"):
            continue
        for item in known:
            if item.recognises(value):
                return attribute, item, value
    return None


# --------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------
def orbit_model_for(model, *, device: Optional[str] = None, chunk_size: Optional[int] = None,
                    needs: Sequence[str] = (), **options) -> OrbitModel:
    """The adapter that evaluates ``model`` on an orbit (see the module docstring).

    ``needs``: capabilities the caller uses (``"features"``, ``"layer_hooks"``); a model
    without them is refused with one sentence. ``options`` go to the family's adapter
    (a metatrain checkpoint's ``weights``, ``dtype``...).
    """
    if isinstance(model, OrbitModel):
        return _checked(model, needs)
    kwargs = dict(options, device=device, chunk_size=chunk_size)
    found, obj = resolve(model)
    if found is not None:
        return _checked(found.build(obj, **kwargs), needs)
    held = held_calculator(obj)
    if held is not None:
        attribute, inner_family, inner = held
        return _checked(LookThrough(obj, attribute, inner_family.build(inner, **kwargs)),
                        needs)
    if hasattr(obj, "get_property"):
        from .ase import ASEOrbitModel

        return _checked(ASEOrbitModel(obj), needs)
    raise TypeError(f"cannot evaluate {type(obj).__name__}: pass an ASE calculator, a model "
                    f"of a known family ({', '.join(f.name for f in families())}), a model "
                    "file or a Python entry point 'module:function'")


def _checked(orbit_model: OrbitModel, needs: Sequence[str]) -> OrbitModel:
    for need in needs:
        attribute, what, fix = CAPABILITIES[need]
        if not getattr(orbit_model, attribute, False):
            raise ValueError(f"this needs {what}, which {orbit_model.family} models "
                             f"evaluated as {type(orbit_model).__name__} do not provide: "
                             f"give {fix}")
    return orbit_model


def calculator_for(model, *, device: Optional[str] = None, non_conservative=False):
    """The ASE calculator of ``model``: itself if it is one, else its family's own
    calculator (a metatomic ``.pt`` -> ``MetatomicCalculator``, an Orb model ->
    ``ORBCalculator``...)."""
    if hasattr(model, "get_property"):
        return model
    found, obj = resolve(model)
    if hasattr(obj, "get_property"):
        return obj
    if found is None or found.calculator is None:
        raise TypeError(f"cannot run {type(obj).__name__} as an ASE calculator: pass an "
                        "ASE calculator, a model of a known family "
                        f"({', '.join(f.name for f in families() if f.calculator)}), a "
                        "model file or a Python entry point 'module:function'")
    return found.calculator(obj, device=device, non_conservative=non_conservative)


# --------------------------------------------------------------------------------------
# the wrapper rule
# --------------------------------------------------------------------------------------
def _same_predictions(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
    return all(np.allclose(a[name], b[name], rtol=1e-6, atol=1e-8) for name in a)


class LookThrough(OrbitModel):
    """A calculator holding a family's calculator, evaluated through the held one.

    On the first structure the wrapper's predictions are compared with the held
    calculator's; equal, the held family's adapter evaluates the orbit (batched);
    different (the wrapper adds something), the wrapper itself is evaluated one ASE
    calculation per copy from then on, with one warning. Everything else is the
    adapter's in use (:attr:`current`).
    """

    def __init__(self, wrapper, attribute: str, inner: OrbitModel):
        self.wrapper, self.attribute, self.current = wrapper, attribute, inner
        self.held, self.checked = inner, False
        self._path = (f"{inner.path} (the {type(inner.calculator or inner).__name__} "
                      f"held in {type(wrapper).__name__}.{attribute})")

    def __getattr__(self, name):  # facts, capabilities: those of the adapter in use
        if name in ("current", "wrapper", "held"):
            raise AttributeError(name)
        return getattr(self.current, name)

    @property
    def path(self) -> str:
        return self._path if self.current is self.held else self.current.path

    family = property(lambda self: self.current.family)
    calculator = property(lambda self: self.current.calculator if self.checked else None)
    batched = property(lambda self: self.current.batched)
    direct = property(lambda self: self.current.direct)
    removes_net_force = property(lambda self: self.current.removes_net_force)
    dtype = property(lambda self: self.current.dtype)
    device = property(lambda self: self.current.device)
    has_features = property(lambda self: self.current.has_features)
    has_layer_hooks = property(lambda self: self.current.has_layer_hooks)
    memory_scales_with = property(lambda self: self.current.memory_scales_with)
    free_signals = property(lambda self: self.current.free_signals)

    def free_values(self, values, n_atoms):
        return self.current.free_values(values, n_atoms)

    def warm_up_atoms(self):
        return self.current.warm_up_atoms()

    @property
    def available_outputs(self):
        return self.current.available_outputs

    def check_outputs(self, outputs):
        return self.current.check_outputs(outputs)

    def evaluate(self, atoms, matrices, outputs, *, checked: bool = False):
        self.prepare(atoms)
        if self.current is self.held:
            return self.current.evaluate(atoms, matrices, outputs, checked=checked)
        # the wrapper's own forces and stress stand for the direct outputs asked for
        plain = {name: _QUANTITY_OF_DIRECT.get(name, name) for name in outputs}
        values = self.current.evaluate(atoms, matrices, list(dict.fromkeys(plain.values())),
                                       checked=checked)
        return {name: values[plain[name]] for name in outputs}

    def prepare(self, atoms) -> None:
        if self.checked:
            return
        from .ase import ase_predictions

        self.checked = True
        held = getattr(self.wrapper, self.attribute)
        implemented = set(getattr(self.wrapper, "implemented_properties", ("energy",)))
        names = [n for n in ("energy", "forces") if n in implemented]
        theirs = ase_predictions(self.wrapper, atoms.copy(), names)
        if _same_predictions(theirs, ase_predictions(held, atoms.copy(), names)):
            return
        from .ase import ASEOrbitModel

        why = "its predictions differ from those of the calculator it holds"
        warnings.warn(f"{type(self.wrapper).__name__} holds a "
                      f"{type(held).__name__} in .{self.attribute} but {why}: its orbit is "
                      "evaluated with one ASE calculation per copy (slower, exact)",
                      UserWarning, stacklevel=4)
        self.current = ASEOrbitModel(self.wrapper)
        self.current.path = f"per-copy ASE loop ({why})"
