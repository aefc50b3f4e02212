"""The figures of ``symmon eval`` and ``symmon purify`` leave the session's matplotlib
backend and pyplot figures alone (a notebook or GUI user keeps theirs)."""

import subprocess
import sys
import textwrap

import numpy as np

CHILD = textwrap.dedent("""
    import sys
    import matplotlib
    matplotlib.use("svg")                    # a session's own (non-Agg) backend
    import matplotlib.pyplot as plt
    user_figure = plt.figure()               # and a figure the user has open
    from symmon.frontends.eval_figure import eps_vs_error_figure
    from symmon.frontends.purify import tradeoff_figure

    structures = [{"forces": {"eps": 0.01 * (i + 1), "error": 0.05 * (i + 1)},
                   "energy": {"eps": 1e-3 * (i + 1), "error": None}} for i in range(6)]
    document = {"model": "model.pt", "n_structures": 6, "degree": 4,
                "structures": structures,
                "quantities": {"forces": {"unit": "eV/angstrom", "ratio_median": 0.2},
                               "energy": {"unit": "eV/atom", "ratio_median": None}}}
    eps_vs_error_figure(document, sys.argv[1])
    table = [{"lambda": lam, "holdout_rmse": rmse, "holdout_rel_eps": eps}  # model first
             for lam, rmse, eps in [(float("nan"), 0.1, 0.05), (1.0, 0.1, 0.01),
                                    (10.0, 0.12, 0.001)]]
    tradeoff_figure(table, sys.argv[2], "non_conservative_forces")
    print(matplotlib.get_backend(), plt.get_fignums() == [user_figure.number])
""")


def test_eval_and_purify_figures_keep_the_backend_and_write_valid_pngs(tmp_path):
    import matplotlib.image

    paths = [tmp_path / "eval.png", tmp_path / "tradeoff.png"]
    result = subprocess.run([sys.executable, "-c", CHILD, *map(str, paths)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "True"]
    for path, (height, width) in zip(paths, [(520, 1092), (480, 660)]):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (height, width)  # figsize x dpi: the whole figure
        assert np.ptp(image[..., :3]) > 0.5        # something drawn, not a blank canvas
