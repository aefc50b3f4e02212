"""Readout purification (paper §III.3): a symmetry-penalised least-squares readout."""


def add_purify_arguments(parser) -> None:
    parser.add_argument("model", help="metatomic model (.pt)")
    parser.add_argument("structures", help="structures (any ASE-readable file)")


def run_purify(args) -> int:
    raise NotImplementedError("symmon purify is not implemented yet")


def load_readout(path, orbit_model):
    raise NotImplementedError("purified mode is not implemented yet")
