"""What a log's numbers mean, by its semantics version (older logs mapped here, once).

The writer stores ``semantics_version`` (:data:`symmon.io.h5md.SEMANTICS_VERSION`) in
``/parameters/symmon``.  Each version fixes the meaning of names whose meaning changed:

* **2** (written by the writer): ``forces_eps`` is the RMS over atoms of each atom's
  force ε, ``sqrt(mean_i eps_i^2)`` [eV/Å]; ``forces_eps_total`` is the sum
  ``sqrt(sum_i eps_i^2)``.
* **1** (logs without the attribute, written before it existed): ``forces_eps`` was
  the sum over atoms until the RMS was introduced, together with ``forces_eps_total``
  and a description saying "per atom" / "over atoms".  Such a log's ``forces_eps`` is
  the sum exactly when it has no ``forces_eps_total`` and its description does not say
  so.

Readers ask :class:`LogSemantics` (``LogReader.semantics``), never the version number
or a description text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .h5md import SEMANTICS_VERSION, LogFormatError

#: the version of logs that have no ``semantics_version`` attribute
UNVERSIONED = 1


@dataclass(frozen=True)
class LogSemantics:
    """The meaning of one log's numbers.

    :param version: the log's semantics version (:data:`UNVERSIONED` when not stored)
    :param forces_eps_summed: ``forces_eps`` is ``sqrt(sum_i eps_i^2)`` [eV/Å] (sum over
        atoms) rather than the RMS over atoms
    """

    version: int
    forces_eps_summed: bool = False

    @property
    def current(self) -> bool:
        """Whether every name means what this symmon writes under it (an appended run
        may continue the log)."""
        return not self.forces_eps_summed

    def describe(self) -> str:
        """What differs from today's meaning, in words (empty when nothing does)."""
        return "forces_eps summed over atoms (today: RMS over atoms)" \
            if self.forces_eps_summed else ""


def log_semantics(path: str, stored, specs: Mapping) -> LogSemantics:
    """The :class:`LogSemantics` of a log whose ``semantics_version`` attribute is
    ``stored`` (``None``: absent) and whose observable declarations are ``specs``."""
    if stored is None:
        return LogSemantics(UNVERSIONED, _forces_eps_summed_v1(specs))
    version = int(stored)
    if version > SEMANTICS_VERSION:
        raise LogFormatError(f"{path}: log semantics version {version} is newer than this "
                             f"symmon supports ({SEMANTICS_VERSION}); upgrade symmon")
    if version < UNVERSIONED + 1:
        raise LogFormatError(f"{path}: log semantics version {version} was never written "
                             "by symmon; the file is damaged or not a symmon log")
    return LogSemantics(version)


def _forces_eps_summed_v1(specs: Mapping) -> bool:
    if "forces_eps" not in specs or "forces_eps_total" in specs:
        return False
    text = specs["forces_eps"].description.lower()
    return not any(word in text for word in ("per atom", "per-atom", "over atoms"))
