"""Coverage of the engine's eps intervals on the analytic models of tests/test_statistics.py.

    python benchmarks/interval_coverage.py [--seeds 1000]

Prints one markdown row per model: measured 68 % / 95 % coverage at 2, 3, 5, 10 rotations.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from test_statistics import MODELS, POINTS, ROTATIONS, coverage  # noqa: E402

from symmon import orbit_metrics  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    args = parser.parse_args()
    print("| model | " + " | ".join(f"P = {p}" for p in ROTATIONS) + " |")
    print("|---|" + "---|" * len(ROTATIONS))
    for name, (fn, kind, _) in MODELS.items():
        exact = orbit_metrics(fn, POINTS, kind, l_max=None, degree=16).error.eps
        cells = ["%.0f / %.0f" % tuple(coverage(fn, kind, p, exact, args.seeds)) for p in ROTATIONS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
