"""The ``confdiff`` command line: one module per subcommand, imported only when that subcommand runs.

Each module of ``confdiff.cli`` exposes ``add_arguments(parser)`` and ``run(args) -> int``; all
argparse lives in this package. ``confdiff --help`` and ``confdiff --version`` import none of them,
so they answer without loading torch, e3nn or torch_geometric.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

# subcommand -> (module, one-line help). The module exposes add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("confdiff.cli.generate", "conformer ensembles for molecules or a library (SDF / SMILES / MOL2)"),
    "score": ("confdiff.cli.score", "log-likelihood of every conformer of an SDF under the model; rank / filter by it"),
    "train": ("confdiff.cli.train", "train the conformer score model (CPU, CUDA, torchrun for DDP)"),
    "dataset": ("confdiff.cli.dataset", "build conformer ensembles to train on (resumable)"),
    "benchmark": ("confdiff.cli.benchmark", "compare conformer generators: COV / MAT, bioactive recovery, speed"),
    "image": ("confdiff.cli.image", "train, sample and score image diffusion models (digits, IDX files)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module (if any) is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="confdiff", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"confdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
            cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the top-level options take no value, so the first word that is not an option names the subcommand
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
