"""Command-line front-ends of ``symmon layers`` and ``symmon checkpoints``."""

from __future__ import annotations

import os


def _common(parser, output: str) -> None:
    parser.add_argument("--modules", nargs="+", default=None, metavar="PATTERN",
                        help="module names or fnmatch patterns to hook, e.g. "
                        "'backend.gnn_layers.*.edge_embedder' 'backend.gnn_layers.0:edge' "
                        "'output:energy' (default: PET's standard set)")
    parser.add_argument("--l-max", type=int, default=4,
                        help="largest l resolved; the power beyond is the residual (default 4)")
    parser.add_argument("--degree", type=int, default=None,
                        help="quadrature degree (default and minimum 2*l_max)")
    parser.add_argument("--weights", choices=("epoch", "best"), default="epoch",
                        help="checkpoint weights: 'epoch' (as at that epoch, default) or "
                        "'best' (what mtt export uses)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if "
                        "available, else cpu); evaluation is float64")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="transformed copies per forward call (default: planned from "
                        "the memory one copy takes)")
    parser.add_argument("--max-memory-gb", type=float, default=2.0,
                        help="memory for the captured features of one structure; modules "
                        "are evaluated in groups to stay below (default 2)")
    parser.add_argument("--index", default=":", help="ASE index of the structures to use")
    parser.add_argument("--energy-key", default=None, help="extxyz key of energy labels")
    parser.add_argument("--forces-key", default=None, help="extxyz key of force labels")
    parser.add_argument("--stress-key", default=None, help="extxyz key of stress labels")
    parser.add_argument("--options", default=None,
                        help="metatrain options file to take the label keys from (default: "
                        "options_restart.yaml / options.yaml next to the checkpoints)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file")
    parser.add_argument("-o", "--output", default=output, help=f"HDF5 output (default {output})")


def add_layers_arguments(parser) -> None:
    parser.add_argument("model", help="metatrain checkpoint (.ckpt)")
    parser.add_argument("structures", help="structures to analyse (any ASE-readable file)")
    _common(parser, "layers.h5")


def add_checkpoints_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+",
                        help="metatrain run directories or model_<epoch>.ckpt files, then "
                        "the STRUCTURES file (last)")
    parser.add_argument("--every", type=int, default=1,
                        help="analyse every n-th checkpoint (the last one always)")
    _common(parser, "training.h5")


def _label_keys(args, search):
    from .drivers import resolve_label_keys

    return resolve_label_keys(args.energy_key, args.forces_key, args.stress_key,
                              args.options, search)


def run_layers(args) -> int:
    from .drivers import analyze_layers, format_table

    keys = _label_keys(args, [args.model])
    result = analyze_layers(
        args.model, args.structures, args.output, modules=args.modules, l_max=args.l_max,
        degree=args.degree, weights=args.weights, device=args.device,
        chunk_size=args.chunk_size, max_memory_gb=args.max_memory_gb, index=args.index,
        label_keys=keys, overwrite=args.overwrite, progress=not args.no_progress)
    if not result:  # a rank other than 0 of a torchrun launch: rank 0 reports
        return 0
    print(format_table(result))
    print(f"wrote {args.output} and {result.get('figure')}")
    return 0


def run_checkpoints(args) -> int:
    from .drivers import analyze_checkpoints

    if len(args.inputs) < 2:
        raise ValueError("give at least one run directory or checkpoint, then the "
                         "structures file")
    *inputs, structures = args.inputs
    if structures.endswith(".ckpt") or os.path.isdir(structures):
        raise ValueError(f"the last argument must be the structures file, got {structures!r}")
    keys = _label_keys(args, inputs)
    result = analyze_checkpoints(
        inputs, structures, args.output, modules=args.modules, l_max=args.l_max,
        degree=args.degree, weights=args.weights, device=args.device,
        chunk_size=args.chunk_size, max_memory_gb=args.max_memory_gb, index=args.index,
        label_keys=keys, every=args.every, overwrite=args.overwrite,
        progress=not args.no_progress)
    if not result:  # a rank other than 0 of a torchrun launch: rank 0 reports
        return 0
    print(f"epochs in {args.output}: {result['epochs']} (analysed now: {result['analysed']}, "
          f"skipped: {result['skipped']})")
    for name, data in result["outputs"].items():
        print(f"{name}: relative eps {data['relative_mean'][-1]:.3e}, "
              f"rmse {data['rmse'][-1]:.3e} at epoch {result['epochs'][-1]}")
    if result.get("figures"):
        print(f"figures in {os.path.dirname(result['figures'][0])}")
    return 0
