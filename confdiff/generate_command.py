"""``confdiff generate``: conformer ensembles for a molecule library, streamed, resumable, sharded.

Input records are read one by one and every finished molecule is appended to the output SDF and
flushed, so a killed run leaves a valid SDF of the molecules done so far; ``--resume`` drops a
half-written last molecule and completes the rest without duplicates. ``--shard i/N`` takes the
records whose number is ``i`` modulo ``N`` (run one shard per GPU or machine, then concatenate).
Every failure names the record and the reason in the ``--errors`` file (or on stderr); the exit
code is 0 when every molecule succeeded, 1 when some failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rdkit import Chem

from .chem.io import MolRecord, SDFWriter, read_molecules, record_text

__all__ = ["add_arguments", "run", "completed_records"]

ENSEMBLE_SIZE = "ensemble_size"
SOURCE_INDEX = "source_index"


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard needs 0 <= i < N, got {text!r}")
    return i, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", help="SDF / SDF.GZ / SMI / MOL2 file, or - for stdin")
    parser.add_argument("--smiles", action="append", default=[], help="a SMILES string (repeatable)")
    parser.add_argument("-n", "--num-conformers", type=int, default=50, help="conformers per molecule")
    parser.add_argument("-o", "--output", default="-", help="output SDF (.sdf or .sdf.gz), - for stdout")
    parser.add_argument("--seed", type=int, default=None, help="base seed; conformer i is reproducible")
    parser.add_argument("--steps", type=int, default=20, help="reverse-diffusion steps")
    parser.add_argument("--sampler", default="euler_maruyama", help="a sampler of confdiff.diffusion.SAMPLERS")
    parser.add_argument("--relax", default="none", choices=["none", "mmff", "gfnff", "gfn2"],
                        help="relax every conformer; energies are written as the `energy` property")
    parser.add_argument("--prune", type=float, default=None, metavar="RMSD", help="drop near-duplicates (A)")
    parser.add_argument("--energy-window", type=float, default=None, metavar="KCAL",
                        help="keep conformers within this window of the lowest energy (needs --relax)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=20000,
                        help="most atoms (all conformers together) in one graph batch")
    parser.add_argument("--num-workers", type=int, default=1, help="threads for ETKDG seeds")
    parser.add_argument("--model", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--errors", default=None, help="write failures here (TSV) instead of stderr")
    parser.add_argument("--resume", action="store_true", help="complete an interrupted run's output")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="i/N")
    parser.add_argument("--no-progress", action="store_true")


def completed_records(path: Path) -> set[int]:
    """Source records fully written to ``path``; a half-written last molecule is cut off in place."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    done: set[int] = set()
    good_end = 0
    pos = 0
    counts: dict[int, int] = {}
    for chunk in raw.split(b"$$$$\n")[:-1]:
        pos += len(chunk) + len(b"$$$$\n")
        mol = Chem.MolFromMolBlock(chunk.decode(), sanitize=False, removeHs=False)
        props = dict(_props(chunk.decode()))
        if mol is None or SOURCE_INDEX not in props:
            break
        index, size = int(props[SOURCE_INDEX]), int(props[ENSEMBLE_SIZE])
        counts[index] = counts.get(index, 0) + 1
        if counts[index] == size:
            done.add(index)
            good_end = pos
    if good_end != len(raw):
        data = raw[:good_end]
        tmp = path.with_name(f".{path.name}.resume.tmp")
        with (gzip.open(tmp, "wb") if path.suffix == ".gz" else open(tmp, "wb")) as fh:
            fh.write(data)
        os.replace(tmp, path)
    return done


def _props(block: str) -> Iterator[tuple[str, str]]:
    lines = block.split("\n")
    for k, line in enumerate(lines):
        if line.startswith(">") and "<" in line and k + 1 < len(lines):
            yield line[line.index("<") + 1:line.rindex(">")], lines[k + 1].strip()


def _records(args) -> Iterator[MolRecord]:
    if args.smiles:
        for k, smi in enumerate(args.smiles):
            yield from (MolRecord(k, smi, r.mol, r.error, r.warnings) for r in read_molecules(smi, fmt="smiles"))
    if args.input:
        offset = len(args.smiles)
        for r in read_molecules(args.input):
            yield MolRecord(r.index + offset, r.name, r.mol, r.error, r.warnings)


class _StdoutSink:
    """The subset of SDFWriter used here, writing text to stdout."""

    def __init__(self):
        self.stream = sys.stdout

    def write(self, mol, conf_ids=None, *, name=None, props=None, conf_props=None):
        text = "".join(
            record_text(mol, cid, name, {"conformer_index": k, **(props or {}), **(conf_props[k] if conf_props else {})})
            for k, cid in enumerate(conf_ids)
        )
        self.stream.write(text)
        self.stream.flush()

    def close(self):
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from .conformers import ConformerGenerator

    if not args.input and not args.smiles:
        print("confdiff generate: give an input file, - for stdin, or --smiles", file=sys.stderr)
        return 2
    if args.energy_window is not None and args.relax == "none":
        print("confdiff generate: --energy-window needs --relax", file=sys.stderr)
        return 2
    out_path = None if args.output == "-" else Path(args.output)
    done: set[int] = set()
    if out_path is not None and out_path.exists() and out_path.stat().st_size:
        if args.resume:
            done = completed_records(out_path)
        elif not args.overwrite:
            print(f"confdiff generate: {out_path} exists; use --resume to complete it or --overwrite",
                  file=sys.stderr)
            return 2
        else:
            out_path.unlink()
    errors = open(args.errors, "a" if args.resume else "w") if args.errors else sys.stderr
    generator = ConformerGenerator(
        args.model, device=args.device, steps=args.steps, sampler=args.sampler, relax=args.relax,
        prune_rms=args.prune, energy_window=args.energy_window, max_atoms_per_batch=args.batch_size,
        embed_threads=args.num_workers,
    )
    sink = SDFWriter(out_path, mode="stream") if out_path is not None else _StdoutSink()
    shard, num_shards = args.shard
    failures = molecules = conformers = 0
    start = time.perf_counter()
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(unit="mol", file=sys.stderr)
    try:
        for record in _records(args):
            if record.index % num_shards != shard or record.index in done:
                continue
            label = f"record {record.index + 1} ({record.name})"
            if not record.ok:
                failures += 1
                print(f"{label}\t{record.error}", file=errors, flush=True)
                continue
            result = next(generator.generate_many([record.mol], args.num_conformers, seed=args.seed))
            for warning in (*record.warnings, *result.warnings):
                print(f"{label}\twarning: {warning}", file=sys.stderr, flush=True)
            if not result.ok:
                failures += 1
                print(f"{label}\t{result.error}", file=errors, flush=True)
                continue
            mol = result.mol
            ids = [c.GetId() for c in mol.GetConformers()]
            conf_props = []
            for cid in ids:
                conf = mol.GetConformer(cid)
                props = {"seed": conf.GetIntProp("seed")}
                if conf.HasProp("energy"):
                    props["energy"] = f"{conf.GetDoubleProp('energy'):.4f}"
                conf_props.append(props)
            sink.write(mol, ids, name=record.name,
                       props={SOURCE_INDEX: record.index, ENSEMBLE_SIZE: len(ids), "generator": "confdiff"},
                       conf_props=conf_props)
            molecules += 1
            conformers += len(ids)
            if progress is not None:
                elapsed = time.perf_counter() - start
                progress.set_postfix(conf_per_s=f"{conformers / elapsed:.1f}", failed=failures)
                progress.update(1)
    finally:
        sink.close()
        if progress is not None:
            progress.close()
        if errors is not sys.stderr:
            errors.close()
    elapsed = time.perf_counter() - start
    print(f"confdiff generate: {molecules} molecules, {conformers} conformers, {failures} failed, "
          f"{elapsed:.1f} s", file=sys.stderr)
    return 1 if failures else 0
