"""Command-line front-ends of ``symmon layers`` and ``symmon checkpoints``."""


def add_layers_arguments(parser) -> None:
    parser.add_argument("model", help="metatrain checkpoint (.ckpt)")
    parser.add_argument("structures", help="structures to analyse (any ASE-readable file)")
    parser.add_argument("--modules", nargs="*", default=None, metavar="PATTERN",
                        help="module-name patterns to hook (default: PET's standard set)")
    parser.add_argument("--l-max", type=int, default=4)
    parser.add_argument("-o", "--output", default="layers.h5")


def add_checkpoints_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+",
                        help="metatrain run directory or checkpoint files, then STRUCTURES")
    parser.add_argument("--modules", nargs="*", default=None, metavar="PATTERN")
    parser.add_argument("--l-max", type=int, default=4)
    parser.add_argument("-o", "--output", default="training.h5")


def run_layers(args) -> int:
    raise NotImplementedError("symmon layers is not implemented yet")


def run_checkpoints(args) -> int:
    raise NotImplementedError("symmon checkpoints is not implemented yet")
