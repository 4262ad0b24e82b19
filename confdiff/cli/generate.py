"""``confdiff generate``: conformer ensembles for a molecule library, streamed, resumable, sharded.

Input records are read one by one and every finished molecule is appended to the output SDF in one
write and flushed, so a killed run leaves a valid SDF of the molecules done so far; ``--resume``
cuts off a half-written last molecule and completes the rest without duplicates (records are
identified by their ``record`` property, the 1-based record number of the input). ``--shard i/N``
takes the records whose 0-based number is ``i`` modulo ``N``; ``--shard auto`` reads ``RANK`` and
``WORLD_SIZE`` (as set by ``torchrun``), and ``{shard}`` in ``-o`` / ``--errors`` becomes ``i``.

Every failure names the record and the reason in the ``--errors`` file (TSV: record, name, reason)
or on stderr, and the run goes on. Exit code: 0 when every molecule succeeded, 1 when anything
failed (a molecule, or an input that could not be read at all), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import os
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..chem.io import (
    MoleculeInputError,
    MolRecord,
    SDFWriter,
    read_molecules,
    record_text,
)
from ..conformers.modes import DEFAULT_MODE, MODES

__all__ = ["add_arguments", "completed_records", "keep_freed_memory", "run"]

#: ``confdiff.conformers.physics.GUIDANCE_CHOICES``, spelled out so that ``--help`` does not import torch
GUIDANCE_CHOICES = ("none", "repulsion", "mmff", "mmff-screened")
RECORD = "record"  # 1-based input record number, on every output record
ENSEMBLE_SIZE = "ensemble_size"  # conformers written for that input record
REJECTED_DRAWS = "rejected_draws"  # draws of that input that the validity gate replaced
RELAX_CHOICES = ("none", "mmff", "gfnff", "gfn2")


def _parse_shard(text: str) -> tuple[int, int] | None:
    if text == "auto":
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N or be 'auto', got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard needs 0 <= i < N, got {text!r}")
    return i, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", help="SDF / SMI / MOL2 file (optionally .gz), or - for stdin")
    parser.add_argument("--smiles", action="append", default=[], help="a SMILES string (repeatable)")
    parser.add_argument("-n", "--num-conformers", type=int, default=50, help="conformers per molecule (50)")
    parser.add_argument("-o", "--output", default="-", help="output SDF (.sdf or .sdf.gz), - for stdout (default)")
    parser.add_argument("--seed", type=int, default=None,
                        help="base seed: conformer i of a molecule is reproducible whatever the batching")
    parser.add_argument("--mode", default=DEFAULT_MODE, choices=MODES,
                        help="torsions: the torsions of MMFF94-minimised ETKDG seeds (default); refine: torsions + "
                             "a coordinate refinement of the seeds; full: every coordinate from the prior (a model "
                             "trained for it)")
    parser.add_argument("--steps", type=int, default=None,
                        help="reverse-diffusion steps (default 20; 50 in the full mode)")
    parser.add_argument("--sampler", default="euler_maruyama", help="a sampler of confdiff.diffusion.samplers.SAMPLERS")
    parser.add_argument("--guidance", default=None, choices=GUIDANCE_CHOICES,
                        help="physics guidance near the end of the reverse diffusion: repulsion (bonded geometry + "
                             "soft repulsion, cheap), mmff (MMFF94), mmff-screened (MMFF94 with a distance-dependent "
                             "dielectric 4r, which also ranks the draws), none (default: the mode's, see docs)")
    parser.add_argument("--guidance-scale", type=float, default=None, metavar="LAMBDA",
                        help="weight of -E/kT in the guided score at the end of the trajectory (default: the mode's)")
    parser.add_argument("--polish-steps", type=int, default=0, metavar="K",
                        help="steps of energy descent over the torsions alone after the diffusion, on the guidance "
                             "potential (torsions mode; 0: off, the default; see docs/benchmarks.md)")
    parser.add_argument("--keep-unpolished", action=argparse.BooleanOptionalAction, default=False,
                        help="with --polish-steps, choose the conformers from every draw as drawn and as polished "
                             "(default: the polished draws only)")
    parser.add_argument("--seed-relax", default="mmff", choices=("mmff", "none"),
                        help="minimise the ETKDG seed structures with MMFF94 before the diffusion (mmff, default; "
                             "the geometry the model was trained on) or use them as embedded (none)")
    parser.add_argument("--small-ring-torsions", action=argparse.BooleanOptionalAction, default=False,
                        help="embed the ETKDG seed structures with the torsion preferences of small rings "
                             "(default: off; the seeds give the ring puckers)")
    parser.add_argument("--oversample", type=float, default=None, metavar="F",
                        help="draw F times the conformers asked for and keep n of them by --select (default 2; "
                             "1: the first usable draws)")
    parser.add_argument("--select", default="diverse", choices=("diverse", "energy"),
                        help="which oversampled draws to keep: diverse (farthest-point in RMSD among the lowest "
                             "--diverse-fraction in MMFF94 energy; default) or energy (the lowest)")
    parser.add_argument("--diverse-fraction", type=float, default=0.75, metavar="F",
                        help="share of the usable draws, the lowest in energy, that --select diverse chooses from "
                             "(0.75); lower favours precision, higher recall")
    parser.add_argument("--relax", default="none", choices=RELAX_CHOICES,
                        help="relax every conformer (MMFF94 or xtb); energies go to the `energy` property")
    parser.add_argument("--prune", type=float, default=None, metavar="RMSD",
                        help="drop conformers within RMSD (heavy atoms, A) of a kept one")
    parser.add_argument("--energy-window", type=float, default=None, metavar="KCAL",
                        help="keep conformers within KCAL kcal/mol of the lowest (needs --relax)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=20000, metavar="ATOMS",
                        help="most atoms (all conformers of all molecules together) in one graph batch; "
                             "bounds memory (20000)")
    parser.add_argument("--num-workers", type=int, default=1, help="CPU threads for the ETKDG seeds and xtb (1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's CPU threads while sampling (1: best when several processes run side by side)")
    parser.add_argument("--no-validity-gate", action="store_true",
                        help="write the sampler's draws as they are, without replacing those that fail a validity check")
    parser.add_argument("--model", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--errors", default=None, metavar="TSV", help="write failures here instead of stderr")
    parser.add_argument("--resume", action="store_true", help="complete an interrupted run's output file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="i/N|auto",
                        help="process records i, i+N, i+2N, ...; auto: RANK / WORLD_SIZE from torchrun")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# --- resume -------------------------------------------------------------------------------------------

def _open(path: Path, mode: str) -> IO[bytes]:
    return gzip.open(path, mode) if path.suffix.lower() == ".gz" else open(path, mode)


def completed_records(path: str | os.PathLike) -> set[int]:
    """Input record numbers whose whole ensemble is in the output ``path``.

    A half-written tail (a molecule with fewer records than its ``ensemble_size``, a record without
    ``$$$$``, a gzip member cut short) is cut off in place. Raises ``ValueError`` for a file that was
    not written by ``confdiff generate`` (a record without the ``record`` property).
    """
    path = Path(path)
    done: set[int] = set()
    counts: dict[int, int] = {}
    props: dict[str, str] = {}
    key: str | None = None
    in_props = False
    offset = good_end = num = 0
    try:
        with _open(path, "rb") as fh:
            for line in fh:
                offset += len(line)
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if key is not None:
                    props[key], key = text.strip(), None
                elif text.startswith("$$$$"):
                    num += 1
                    if RECORD not in props or ENSEMBLE_SIZE not in props:
                        raise ValueError(f"{path}: SDF record {num} has no <{RECORD}> / <{ENSEMBLE_SIZE}> property; "
                                         "not an output of confdiff generate")
                    record = int(props[RECORD])
                    counts[record] = counts.get(record, 0) + 1
                    if counts[record] == int(props[ENSEMBLE_SIZE]):
                        done.add(record)
                        good_end = offset
                    props, in_props = {}, False
                elif text == "M  END":
                    in_props = True
                elif in_props and text.startswith(">") and "<" in text:
                    key = text[text.index("<") + 1:text.rindex(">")]
    except (EOFError, gzip.BadGzipFile, zlib.error):
        offset = -1  # a gzip member cut short: rewrite below
    if offset != good_end:
        _truncate(path, good_end)
    return done


def _truncate(path: Path, size: int) -> None:
    """Keep the first ``size`` (uncompressed) bytes of ``path``."""
    if path.suffix.lower() != ".gz":
        os.truncate(path, size)
        return
    tmp = path.with_name(f".{path.name}.resume.tmp")
    with _open(path, "rb") as src, gzip.open(tmp, "wb") as dst:
        dst.write(src.read(size))
    os.replace(tmp, path)


# --- reporting ----------------------------------------------------------------------------------------

class _Report:
    """Failures to the ``--errors`` TSV (or stderr), warnings to stderr, and the progress bar."""

    def __init__(self, errors: Path | None, append: bool, progress: bool):
        self.num_failed = 0
        self.errors = None
        if errors is not None:
            fresh = not (append and errors.exists() and errors.stat().st_size)
            self.errors = open(errors, "a" if append else "w")  # noqa: SIM115 (closed by close())
            if fresh:
                self.errors.write("record\tname\treason\n")
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(unit="mol", file=sys.stderr, dynamic_ncols=True)

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def failure(self, record: int | None, name: str, reason: str) -> None:
        self.num_failed += 1
        if self.errors is not None:
            clean = [str(v).replace("\t", " ").replace("\n", " ") for v in ("" if record is None else record, name, reason)]
            self.errors.write("\t".join(clean) + "\n")
            self.errors.flush()
        else:
            self._say(f"confdiff generate: {_label(record, name)}: {reason}")

    def warning(self, record: int, name: str, text: str) -> None:
        self._say(f"confdiff generate: {_label(record, name)}: warning: {text}")

    def done(self, conformers: int, elapsed: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(conf_per_s=f"{conformers / max(elapsed, 1e-9):.1f}", failed=self.num_failed)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.errors is not None:
            self.errors.close()


def _label(record: int | None, name: str) -> str:
    return name if record is None else f"record {record} ({name})"


class _StdoutSink:
    """``SDFWriter.write`` to stdout: one SDF record per conformer, flushed per molecule."""

    def write(self, mol, conf_ids, *, name, props, conf_props) -> None:
        sys.stdout.write("".join(record_text(mol, cid, name, {**props, **cp}) for cid, cp in zip(conf_ids, conf_props)))
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.flush()


# --- the run ------------------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse: large tensors below 32 MiB (glibc's maximum) come from
    the heap, which is not trimmed, instead of a fresh ``mmap`` whose pages fault in on every step.
    On CPU this saves about a quarter of the sampling time here; no-op where libc is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def _resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is not None:
        return shard
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"--shard auto: RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def _sources(args) -> Iterator[tuple[int, str, MolRecord | str]]:
    """``(0-based index, name, SMILES or record)``: the ``--smiles`` values, then the input's records."""
    for k, smiles in enumerate(args.smiles):
        yield k, smiles, smiles
    if args.input:
        for rec in read_molecules(args.input):
            yield rec.index + len(args.smiles), rec.name, rec


def _inputs(args, shard: int, num_shards: int, done: set[int], report: _Report, pending: deque):
    """The molecules (``Mol`` or SMILES) of this shard still to do. Unreadable records are reported;
    ``(record, name, input SD properties)`` of every molecule handed out is appended to ``pending``."""
    for index, name, source in _sources(args):
        record = index + 1
        if index % num_shards != shard or record in done:
            continue
        if isinstance(source, str):
            pending.append((record, name, {}))
            yield source
            continue
        if not source.ok:
            report.failure(record, name, source.error)
            continue
        for note in source.warnings:
            report.warning(record, name, note)
        pending.append((record, name, source.mol.GetPropsAsDict(includePrivate=False, includeComputed=False)))
        yield source.mol


def run(args: argparse.Namespace) -> int:
    def usage(message: str) -> int:
        print(f"confdiff generate: {message}", file=sys.stderr)
        return 2

    if not args.input and not args.smiles:
        return usage("give an input file, - for stdin, or --smiles")
    if args.input and args.input != "-" and not Path(args.input).is_file():
        return usage(f"{args.input}: no such file")
    if args.energy_window is not None and args.relax == "none":
        return usage("--energy-window needs --relax")
    if args.num_conformers < 1 or args.num_workers < 1:
        return usage(f"-n and --num-workers must be >= 1, got {args.num_conformers} and {args.num_workers}")
    try:
        shard, num_shards = _resolve_shard(args.shard)
    except ValueError as err:
        return usage(str(err))
    out_path = None if args.output == "-" else Path(args.output.replace("{shard}", str(shard)))
    errors_path = None if args.errors is None else Path(args.errors.replace("{shard}", str(shard)))
    if args.resume and out_path is None:
        return usage("--resume needs an output file (-o)")
    done: set[int] = set()
    if out_path is not None and out_path.exists() and out_path.stat().st_size:
        if args.resume:
            try:
                done = completed_records(out_path)
            except ValueError as err:
                return usage(f"cannot resume: {err}")
        elif args.overwrite:
            out_path.unlink()
        else:
            return usage(f"{out_path} exists; use --resume to complete it or --overwrite to replace it")
    import torch

    from ..conformers.generator import ConformerGenerator

    keep_freed_memory()
    device = args.device
    if device is None and args.shard is None and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}" if torch.cuda.is_available() else "cpu"
    try:
        generator = ConformerGenerator(
            args.model, device=device, steps=args.steps, sampler=args.sampler, relax=args.relax,
            prune_rms=args.prune, energy_window=args.energy_window, max_atoms_per_batch=args.batch_size,
            num_workers=args.num_workers, mode=args.mode, guidance=args.guidance, guidance_scale=args.guidance_scale,
            num_threads=args.threads, validity_gate=not args.no_validity_gate, seed_relax=args.seed_relax,
            small_ring_torsions=args.small_ring_torsions, oversample=args.oversample, selection=args.select,
            polish_steps=args.polish_steps,
            diverse_fraction=args.diverse_fraction, keep_unpolished=args.keep_unpolished,
        )
    except (FileNotFoundError, ValueError) as err:
        return usage(str(err))

    report = _Report(errors_path, append=args.resume, progress=not args.no_progress and sys.stderr.isatty())
    sink = SDFWriter(out_path, mode="stream") if out_path is not None else _StdoutSink()
    pending: deque = deque()
    molecules = conformers = rejected = draws = 0
    start = time.perf_counter()
    try:
        results = generator.generate_many(_inputs(args, shard, num_shards, done, report, pending),
                                          args.num_conformers, seed=args.seed)
        for result in results:
            record, name, input_props = pending.popleft()
            for note in result.warnings:
                report.warning(record, name, note)
            if not result.ok:
                report.failure(record, name, result.error)
                continue
            confs = list(result.mol.GetConformers())
            conf_props = []
            for conf in confs:
                props = {"conformer_index": conf.GetIntProp("conformer_index"), "seed": conf.GetIntProp("seed")}
                if conf.HasProp("energy"):
                    props["energy"] = f"{conf.GetDoubleProp('energy'):.4f}"
                if conf.HasProp("stereoisomer"):
                    props["stereoisomer"] = conf.GetProp("stereoisomer")
                conf_props.append(props)
            sink.write(result.mol, [c.GetId() for c in confs], name=name,
                       props={**input_props, RECORD: record, ENSEMBLE_SIZE: len(confs),
                              REJECTED_DRAWS: result.rejected_draws}, conf_props=conf_props)
            molecules += 1
            conformers += len(confs)
            rejected += result.rejected_draws
            draws += result.num_draws
            report.done(conformers, time.perf_counter() - start)
    except MoleculeInputError as err:
        report.failure(None, args.input, str(err))
    finally:
        sink.close()
        report.close()
    elapsed = time.perf_counter() - start
    where = f" (see {errors_path})" if errors_path is not None and report.num_failed else ""
    if draws:
        print(f"confdiff generate: validity gate: {rejected} of {draws} draws failed a check or the "
              f"stereochemistry and were replaced by new draws", file=sys.stderr)
    print(f"confdiff generate: {molecules} molecules, {conformers} conformers, {report.num_failed} failed{where}, "
          f"{elapsed:.1f} s", file=sys.stderr)
    return 1 if report.num_failed else 0
