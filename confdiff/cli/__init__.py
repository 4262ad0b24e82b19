"""The ``confdiff`` command line: wires each subcommand to the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# subcommand -> (module, one-line help). The module exposes add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("confdiff.generate_command", "conformer ensembles for molecules or a library (SDF / SMILES / MOL2)"),
    "score": ("confdiff.score_command", "log-likelihood of every conformer of an SDF under the model; rank / filter by it"),
    "train": ("confdiff.train_conformers", "train the conformer score model (CPU, CUDA, torchrun for DDP)"),
    "dataset": ("confdiff.chem.data", "build conformer ensembles to train on (resumable)"),
    "benchmark": ("confdiff.benchmark", "compare conformer generators: COV / MAT, bioactive recovery, speed"),
    "image": ("confdiff.images", "train, sample and score image diffusion models (digits, IDX files)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confdiff", description=__doc__)
    parser.add_argument("--version", action="version", version=f"confdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
