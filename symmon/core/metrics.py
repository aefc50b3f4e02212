"""The engine's measurements, one import away (each lives in its own file).

* :mod:`symmon.core.orbit_values` - checks, back-transformation, orbit average, points
* :mod:`symmon.core.error` - equivariance error, its interval, exactness and noise floor
* :mod:`symmon.core.intervals` - the interval of ``eps`` from random rotation pairs
* :mod:`symmon.core.spectrum` - character spectra
* :mod:`symmon.core.orbit` - ``orbit_metrics``: evaluate a function on an orbit, measure it
"""

from .error import EquivarianceError, equivariance_error
from .orbit import OrbitMetrics, orbit_metrics
from .orbit_values import back_transform, orbit_average, transform_points
from .representations import parse_kind
from .spectrum import CharacterSpectrum, character_spectrum

__all__ = [
    "EquivarianceError", "CharacterSpectrum", "OrbitMetrics", "back_transform",
    "equivariance_error", "character_spectrum", "orbit_average", "orbit_metrics",
    "parse_kind", "transform_points",
]
