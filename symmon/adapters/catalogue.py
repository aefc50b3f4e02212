"""What a metatomic-style model declares, under symmon's names, and how to ask for it.

A model declares outputs under its own spellings (metatomic 0.1.19 renamed
``non_conservative_forces`` to ``non_conservative_force``; metatrain still trains the
plural; a model exported with 0.1.19 declares both, older ones only one). Every
name decision goes through :mod:`symmon.core.outputs` (:func:`spellings`,
:func:`canonical_name`, :func:`output`); this file only matches those spellings
against what the model declares.

* conservative ``forces`` / ``stress`` come from the ``energy`` output by autograd;
* ``energies`` (per atom) is offered when the model can give per-atom energies;
* the last-layer features of a target ``T`` are metatrain's
  ``mtt::aux::T_last_layer_features`` under whichever spelling of ``T`` the model
  was trained with (:meth:`OutputCatalogue.feature_output`).
"""

from __future__ import annotations

import functools

from typing import Dict, Mapping, Optional, Sequence, Tuple

from ..core.outputs import canonical_name, output, spellings

#: outputs computed from the energy by autograd
GRADIENT_OUTPUTS = ("forces", "stress")
#: outputs read from the model's ``energy`` output
ENERGY_OUTPUTS = ("energy", "energies") + GRADIENT_OUTPUTS


def last_layer_features_name(model_key: str) -> str:
    """metatrain's name of the last-layer features of the model output ``model_key``."""
    return f"mtt::aux::{model_key}_last_layer_features"


class OutputCatalogue:
    """The outputs of one model: symmon name -> model name, and the request for it.

    :param declared: the model's declared outputs (name -> ``ModelOutput``)
    :param model_label: how messages name the model (its file, or its class)
    :param convert_units: request symmon's units (an ``AtomisticModel`` converts);
        ``False`` requests the declared unit (an eager module converts nothing)
    :param sample_kinds: per-atom/per-system of outputs symmon has no row for, when
        the declaration is not what the model was trained for (metatrain declares
        ``"atom"`` for every output of a PET)
    """

    def __init__(self, declared: Mapping, model_label: str, *, convert_units: bool = True,
                 sample_kinds: Optional[Mapping[str, str]] = None):
        self.declared = {name: value for name, value in dict(declared).items()
                         if not name.startswith("o3::")}
        self.model_label = model_label
        self.convert_units = convert_units
        self.sample_kinds = dict(sample_kinds or {})

    # -- names ---------------------------------------------------------------------
    def key(self, name: str) -> Optional[str]:
        """The model's own name for symmon's ``name``, or ``None``.

        Among the spellings the model declares, metatomic's current one (listed
        last by :func:`spellings`) is preferred: requesting it raises no
        deprecation warning, and the ``AtomisticModel`` translates it to the name
        its inner module knows.
        """
        for spelling in reversed(spellings(name)):
            if spelling in self.declared:
                return spelling
        return None

    def has_energy(self) -> bool:
        return self.key("energy") is not None

    def per_atom_energy(self) -> bool:
        """Whether the model can split its energy into per-atom contributions."""
        return self.has_energy() and self.declared[self.key("energy")].sample_kind == "atom"

    @functools.cached_property
    def available(self) -> Tuple[str, ...]:
        """Every name symmon can return: declared ones, symmon's spellings of them,
        and the energy-derived outputs (``energies``, ``forces``, ``stress``)."""
        names = list(self.declared) + [canonical_name(name) for name in self.declared]
        if self.has_energy():
            names += (["energies"] if self.per_atom_energy() else []) + list(GRADIENT_OUTPUTS)
        return tuple(dict.fromkeys(names))

    def check(self, names: Sequence[str]) -> None:
        """Refuse names the model cannot give, naming the model and what it has."""
        available = self.available
        missing = [name for name in names if name not in available]
        if not missing:
            return
        if any(name in ENERGY_OUTPUTS for name in missing) and not self.has_energy():
            advice = ("it has no 'energy' output, so no energy, per-atom energies or "
                      "conservative forces/stress; monitor its direct outputs instead")
        elif "energies" in missing:
            advice = ("its 'energy' output is per structure only; monitor the total "
                      "energy instead")
        else:
            advice = "request one of the outputs it provides"
        raise ValueError(f"{self.model_label} cannot compute {missing}: {advice} "
                         f"({sorted(self.available)})")

    def feature_output(self, target: str) -> str:
        """The model's last-layer-feature output of ``target`` under either spelling."""
        tried = [last_layer_features_name(spelling) for spelling in spellings(target)]
        for name in tried:
            if name in self.declared:
                return name
        raise ValueError(f"{self.model_label} has no last-layer features for {target!r} "
                         f"(no output {' or '.join(repr(t) for t in tried)}); "
                         "purification needs a metatrain model that exports them")

    # -- requests ------------------------------------------------------------------
    def requests(self, names: Sequence[str]) -> Dict[str, object]:
        """``ModelOutput`` requests for ``names`` (energy-derived ones share one).

        The energy is requested per atom when ``energies`` is among ``names`` (the
        totals are then summed); standard outputs per atom or per structure as the
        outputs table says, whatever the model declares.
        """
        from metatomic.torch import ModelOutput

        requests = {}
        if any(name in ENERGY_OUTPUTS for name in names):
            requests[self.key("energy")] = ModelOutput(
                unit=self._unit("energy"),
                sample_kind="atom" if "energies" in names else "system")
        for name in names:
            if name not in ENERGY_OUTPUTS:
                requests[self.key(name)] = ModelOutput(unit=self._unit(name),
                                                       sample_kind=self._sample_kind(name))
        return requests

    def _unit(self, name: str) -> str:
        row = output(name)
        if self.convert_units and row is not None:
            return row.unit
        return self.declared[self.key(name)].unit

    def _sample_kind(self, name: str) -> str:
        row = output(name)
        if row is not None:
            return "atom" if row.per_atom else "system"
        key = self.key(name)
        return self.sample_kinds.get(key, self.declared[key].sample_kind)
