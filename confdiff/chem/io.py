"""Read molecules (SMILES, SDF, MOL2; plain or gzipped; stdin) and write multi-conformer SDF files.

Bad input never stops a file: every record becomes a ``MolRecord`` whose ``mol`` is None and whose
``error`` says why, and reading goes on with the next record. The policy, record by record:

* invalid SMILES / malformed molfile or MOL2 block / failed sanitisation: error, with RDKit's reason;
* a record with no atoms: error;
* an element outside ``EMBEDDABLE_ELEMENTS`` (metals, noble gases, dummy atoms ``*``): error, since
  ETKDG, MMFF94 and the model have no parameters for it;
* a radical (unpaired electrons): error; confdiff handles closed-shell molecules only;
* a salt or mixture (several fragments): the largest organic fragment (most heavy atoms, carbon
  containing first) is kept and the dropped fragments are named in ``warnings``;
* a 2D SDF record (flat coordinates): accepted; the coordinates are ignored (the molecule has no
  conformer) and ``warnings`` says so. 3D records keep their coordinates as conformer 0;
* a truncated or corrupt gzip file: the records before the break are read, then one error record.

An empty input (no records at all) or a missing file raises ``MoleculeInputError``.
"""

from __future__ import annotations

import gzip
import itertools
import os
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rdkit import Chem, rdBase

__all__ = [
    "EMBEDDABLE_ELEMENTS",
    "MolRecord",
    "MoleculeInputError",
    "MoleculeRejected",
    "SDFWriter",
    "check_molecule",
    "detect_format",
    "mol_name",
    "read_molecules",
    "record_text",
]

def mol_name(mol: Chem.Mol) -> str:
    """The molecule's ``_Name`` (stripped), else its canonical SMILES without hydrogens: the one name
    every message, error and output record uses."""
    if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
        return mol.GetProp("_Name").strip()
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))


# Elements ETKDG, MMFF94 / GFN-FF and the model's vocabulary are meant for.
EMBEDDABLE_ELEMENTS = frozenset("H B C N O F Si P S Cl As Se Br I".split())
FORMATS = ("smi", "sdf", "mol2")
_EXTENSIONS = {".smi": "smi", ".smiles": "smi", ".txt": "smi", ".sdf": "sdf", ".sd": "sdf", ".mol": "sdf", ".mol2": "mol2"}
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class MoleculeInputError(ValueError):
    """An input that holds no readable record at all (missing or empty file, unknown format)."""


class MoleculeRejected(ValueError):
    """A molecule refused by the reading policy (no atoms, unembeddable element, radical)."""


@dataclass(frozen=True)
class MolRecord:
    """One record of an input.

    index : 0-based record number in the source (messages print it 1-based).
    name : the record's name (SMILES title, molfile / MOL2 name), else ``"record N"``.
    mol : the sanitised molecule, or None when the record was refused.
    error : why ``mol`` is None.
    warnings : what was changed on an accepted record (salt stripped, 2D coordinates ignored).
    """

    index: int
    name: str
    mol: Chem.Mol | None
    error: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.mol is not None

    def describe(self) -> str:
        """``record 3 (aspirin): <error or warnings>`` for messages."""
        what = self.error if self.error is not None else "; ".join(self.warnings) or "ok"
        return f"record {self.index + 1} ({self.name}): {what}"


def _fragment_label(frag: Chem.Mol) -> str:
    return Chem.MolToSmiles(frag) if frag.GetNumAtoms() else "<empty>"


def check_molecule(mol: Chem.Mol) -> tuple[Chem.Mol, tuple[str, ...]]:
    """Apply the module's policy to a sanitised molecule: ``(kept molecule, warnings)``.

    Raises ``MoleculeRejected`` (no atoms, unembeddable element, radical) with the reason.
    """
    if mol.GetNumAtoms() == 0:
        raise MoleculeRejected("the record has no atoms")
    warnings: list[str] = []
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    if len(frags) > 1:
        def rank(frag: Chem.Mol) -> tuple[bool, int, int]:
            organic = any(a.GetAtomicNum() == 6 for a in frag.GetAtoms())
            return organic, frag.GetNumHeavyAtoms(), frag.GetNumAtoms()

        keep = max(range(len(frags)), key=lambda i: rank(frags[i]))
        dropped = [_fragment_label(f) for i, f in enumerate(frags) if i != keep]
        name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
        mol = Chem.Mol(frags[keep])
        if name:
            mol.SetProp("_Name", name)
        warnings.append(f"salt/mixture: kept the largest organic fragment, dropped {'.'.join(dropped)}")
    bad = sorted({a.GetSymbol() if a.GetAtomicNum() else "*" for a in mol.GetAtoms()} - EMBEDDABLE_ELEMENTS)
    if bad:
        raise MoleculeRejected(
            f"element(s) {', '.join(bad)} cannot be embedded (supported: {' '.join(sorted(EMBEDDABLE_ELEMENTS))})"
        )
    radicals = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    if radicals:
        atoms = [f"{a.GetSymbol()}{a.GetIdx()}" for a in mol.GetAtoms() if a.GetNumRadicalElectrons()]
        raise MoleculeRejected(f"radical with {radicals} unpaired electron(s) on {', '.join(atoms)}; only closed-shell molecules are supported")
    return mol, tuple(warnings)


def _finish(index: int, name: str, mol: Chem.Mol, warnings: tuple[str, ...] = ()) -> MolRecord:
    try:
        kept, more = check_molecule(mol)
    except MoleculeRejected as err:
        return MolRecord(index, name, None, str(err))
    if name and not kept.HasProp("_Name"):
        kept.SetProp("_Name", name)
    return MolRecord(index, name, kept, None, warnings + more)


def _sanitize_reason(mol: Chem.Mol | None, fallback: str) -> str:
    """RDKit's sanitisation message for an unsanitised parse, else ``fallback``."""
    if mol is None:
        return fallback
    try:
        with rdBase.BlockLogs():
            Chem.SanitizeMol(mol)
    except Chem.rdchem.MolSanitizeException as err:
        return f"sanitisation failed: {err}"
    return fallback


# -- SMILES ----------------------------------------------------------------------------------------

def _smiles_record(index: int, text: str, name: str | None) -> MolRecord:
    name = name or text
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(text)
        raw = Chem.MolFromSmiles(text, sanitize=False) if mol is None else None
    if mol is None:
        reason = _sanitize_reason(raw, "SMILES syntax error")
        return MolRecord(index, name, None, f"invalid SMILES {text!r}: {reason}")
    if name:
        mol.SetProp("_Name", name)
    return _finish(index, name, mol)


def _read_smi(lines: Iterable[str]) -> Iterator[MolRecord]:
    """One molecule per line: ``SMILES [name ...]``; blank lines and ``#`` comments skipped."""
    index = 0
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(None, 1)
        if index == 0 and parts[0].lower() == "smiles":  # a header line
            continue
        yield _smiles_record(index, parts[0], parts[1].strip() if len(parts) > 1 else None)
        index += 1


# -- SDF -------------------------------------------------------------------------------------------

def _is_flat(mol: Chem.Mol) -> bool:
    if mol.GetNumConformers() == 0:
        return True
    conf = mol.GetConformer()
    return not conf.Is3D() or not any(abs(conf.GetAtomPosition(i).z) > 1e-4 for i in range(mol.GetNumAtoms()))


def _sdf_record(index: int, block: str) -> MolRecord:
    supplier = Chem.SDMolSupplier()
    supplier.SetData(block, sanitize=True, removeHs=False)
    with rdBase.BlockLogs():
        mol = supplier[0] if len(supplier) else None
    title = block.split("\n", 1)[0].strip()
    name = title or f"record {index + 1}"
    if mol is None:
        supplier.SetData(block, sanitize=False, removeHs=False)
        with rdBase.BlockLogs():
            raw = supplier[0] if len(supplier) else None
        return MolRecord(index, name, None, _sanitize_reason(raw, "malformed molfile block"))
    warnings: tuple[str, ...] = ()
    if mol.GetNumAtoms() and _is_flat(mol):
        if mol.GetNumConformers():
            warnings = ("2D coordinates ignored",)
        mol.RemoveAllConformers()
    return _finish(index, name, mol, warnings)


def _read_sdf(lines: Iterable[str]) -> Iterator[MolRecord]:
    def blocks() -> Iterator[str]:
        current: list[str] = []
        for line in lines:
            current.append(line)
            if line.startswith("$$$$"):
                yield "".join(current)
                current = []
        if "".join(current).strip():
            yield "".join(current)

    for index, block in enumerate(blocks()):
        yield _sdf_record(index, block)


# -- MOL2 ------------------------------------------------------------------------------------------

def _mol2_record(index: int, block: str) -> MolRecord:
    lines = block.splitlines()
    name = lines[1].strip() if len(lines) > 1 and lines[1].strip() else f"record {index + 1}"
    with rdBase.BlockLogs():
        mol = Chem.MolFromMol2Block(block, sanitize=True, removeHs=False)
        raw = Chem.MolFromMol2Block(block, sanitize=False, removeHs=False) if mol is None else None
    if mol is None:
        return MolRecord(index, name, None, _sanitize_reason(raw, "malformed MOL2 block"))
    return _finish(index, name, mol)


def _read_mol2(lines: Iterable[str]) -> Iterator[MolRecord]:
    def blocks() -> Iterator[str]:
        current: list[str] = []
        seen = False
        for line in lines:
            if line.startswith("@<TRIPOS>MOLECULE"):
                if seen:
                    yield "".join(current)
                current, seen = [], True
            if seen:
                current.append(line)
        if seen:
            yield "".join(current)

    for index, block in enumerate(blocks()):
        yield _mol2_record(index, block)


_READERS = {"smi": _read_smi, "sdf": _read_sdf, "mol2": _read_mol2}


# -- sources ---------------------------------------------------------------------------------------

def detect_format(path: str | os.PathLike) -> str:
    """``smi`` / ``sdf`` / ``mol2`` from the file name (a ``.gz`` suffix is looked through)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    raise MoleculeInputError(f"{path}: unknown molecule format; use .smi, .sdf, .mol2 (optionally .gz) or pass fmt")


def _sniff(first_lines: Sequence[str]) -> str:
    text = "".join(first_lines)
    if "@<TRIPOS>" in text:
        return "mol2"
    if "M  END" in text or "V2000" in text or "V3000" in text or "$$$$" in text:
        return "sdf"
    return "smi"


class _BrokenStream(Exception):
    """Internal: the byte stream broke (truncated gzip, binary data); carries the message."""


def _guarded(lines: Iterable[str]) -> Iterator[str]:
    """Lines of a (gzipped) stream; a decompression or decoding error becomes ``_BrokenStream``,
    which stops the record reader without yielding the partial record at the break."""
    try:
        yield from lines
    except _GZIP_ERRORS as err:
        raise _BrokenStream(f"truncated or corrupt gzip data: {err}") from err
    except UnicodeDecodeError as err:
        raise _BrokenStream(f"not a text file: {err}") from err


def _read_stream(stream: IO[str], fmt: str | None, label: str) -> Iterator[MolRecord]:
    lines = _guarded(stream)
    count = 0
    try:
        if fmt is None:
            head = list(itertools.islice(lines, 8))
            fmt = _sniff(head)
            lines = itertools.chain(head, lines)
        if fmt not in _READERS:
            raise MoleculeInputError(f"{label}: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        for record in _READERS[fmt](lines):
            count += 1
            yield record
    except _BrokenStream as err:
        yield MolRecord(count, label, None, f"{err}; the {count} record(s) before the break were read")
        return
    if count == 0:
        raise MoleculeInputError(f"{label}: empty input, no molecule records")


def _looks_like_path(source: str) -> bool:
    """A known file extension, or a path separator in something that is not a SMILES (``/`` and
    ``\\`` are also the double-bond directions of SMILES, as in ``C/C=C/C``)."""
    if any(source.lower().endswith(ext) for ext in (*_EXTENSIONS, ".gz")):
        return True
    if os.sep not in source:
        return False
    token = source.strip().split(None, 1)[0] if source.strip() else ""
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(token, sanitize=False) is None


def read_molecules(source: str | os.PathLike, *, fmt: str | None = None) -> Iterator[MolRecord]:
    """Yield one ``MolRecord`` per record of ``source``.

    source : a path (``.smi``, ``.sdf``, ``.mol``, ``.mol2``, each optionally ``.gz``), ``"-"`` for
        stdin (format sniffed unless ``fmt`` is given), or a SMILES string.
    fmt : ``"smi"``, ``"sdf"`` or ``"mol2"`` to override detection.
    Raises ``MoleculeInputError`` for a missing or empty input; every bad record is yielded with
    its ``error`` instead (see the module docstring for the policy).
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if isinstance(source, str) and source == "-":
        yield from _read_stream(sys.stdin, fmt, "<stdin>")
        return
    path = Path(source)
    if isinstance(source, str) and not path.exists() and not _looks_like_path(source):
        parts = source.strip().split(None, 1)
        if not parts:
            raise MoleculeInputError("empty SMILES string")
        yield _smiles_record(0, parts[0], parts[1] if len(parts) > 1 else None)
        return
    if not path.is_file():
        raise MoleculeInputError(f"{source}: no such file")
    fmt = fmt or detect_format(path)
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        yield from _read_stream(stream, fmt, str(path))


# -- writing ---------------------------------------------------------------------------------------

def record_text(mol: Chem.Mol, conf_id: int, name: str, props: Mapping[str, Any]) -> str:
    """One SDF record (molfile block titled ``name``, then ``props`` as data items, then ``$$$$``)."""
    block = Chem.MolToMolBlock(mol, confId=conf_id)
    lines = [name.replace("\n", " "), *block.split("\n")[1:]]
    out = "\n".join(lines).rstrip("\n") + "\n"
    for key, value in props.items():
        out += f">  <{key}>\n{value}\n\n"
    return out + "$$$$\n"


class SDFWriter:
    """Write molecules, one SDF record per conformer, to ``.sdf`` or ``.sdf.gz``.

    Every record carries the molecule's name as its title, ``conformer_index`` (0-based position in
    the molecule's ensemble) and the given properties.

    mode="atomic" (default): records go to a temporary file beside ``path``, flushed after every
      molecule; a normal ``close()`` renames it onto ``path``, so ``path`` is either the previous
      file or the complete new one. Leaving the ``with`` block by an exception discards the
      temporary file.
    mode="stream": records are appended to ``path`` itself, one whole molecule per write, flushed
      and fsynced. A killed process leaves a valid SDF of the molecules finished so far (gzip:
      each molecule is its own gzip member, and a multi-member gzip file is a valid gzip file).
    """

    def __init__(self, path: str | os.PathLike, *, mode: str = "atomic") -> None:
        if mode not in ("atomic", "stream"):
            raise ValueError(f"mode must be 'atomic' or 'stream', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.gzip = self.path.suffix.lower() == ".gz"
        self.num_molecules = 0
        self.num_records = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "atomic":
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            os.close(fd)
            os.chmod(tmp, 0o644)
            self._target = Path(tmp)
            self._fh: IO[bytes] | None = gzip.open(tmp, "wb") if self.gzip else open(tmp, "wb")
        else:
            self._target = self.path
            self._fh = open(self.path, "ab")

    def write(
        self,
        mol: Chem.Mol,
        conf_ids: Sequence[int] | None = None,
        *,
        name: str | None = None,
        props: Mapping[str, Any] | None = None,
        conf_props: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Write the conformers ``conf_ids`` (all when None) of ``mol``; returns the record count.

        props : properties shared by all records; conf_props : one mapping per conformer (energy...).
        """
        if self._fh is None:
            raise ValueError(f"SDFWriter for {self.path} is closed")
        ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
        if conf_props is not None and len(conf_props) != len(ids):
            raise ValueError(f"conf_props has {len(conf_props)} entries for {len(ids)} conformers")
        if name is None:
            name = mol.GetProp("_Name") if mol.HasProp("_Name") else Chem.MolToSmiles(Chem.RemoveHs(mol))
        text = ""
        for k, cid in enumerate(ids):
            record_props = {"conformer_index": k, **(props or {}), **(conf_props[k] if conf_props else {})}
            text += record_text(mol, cid, name, record_props)
        data = text.encode()
        if self.mode == "stream" and self.gzip:
            data = gzip.compress(data)
        self._fh.write(data)
        self._fh.flush()
        if self.mode == "stream":
            os.fsync(self._fh.fileno())
        self.num_molecules += 1
        self.num_records += len(ids)
        return len(ids)

    def close(self) -> None:
        """Finish the file (atomic mode: rename the temporary file onto ``path``)."""
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        if self.mode == "atomic":
            os.replace(self._target, self.path)

    def abort(self) -> None:
        """Atomic mode: discard everything written; ``path`` stays as it was."""
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        if self.mode == "atomic":
            self._target.unlink(missing_ok=True)

    def __enter__(self) -> SDFWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
