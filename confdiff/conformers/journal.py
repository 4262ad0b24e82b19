"""A benchmark's journal: every finished job's :class:`~confdiff.conformers.evaluation.Outcome`,
one JSON line each, so that an interrupted ``confdiff benchmark`` resumes where it stopped.

A line holds the job's :attr:`~confdiff.conformers.evaluation.Job.fingerprint` and its outcome; a
rerun reuses the outcomes whose fingerprint matches one of its jobs and runs the rest. ``file:``
methods are not journalled (reading them is cheap, and the file may have changed). A line cut short
by an interruption is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .evaluation import FILE_PREFIX, Job, Outcome

__all__ = ["Journal"]


def _encode(outcome: Outcome) -> dict:
    return {"method": outcome.method, "key": outcome.key,
            "rmsd": None if outcome.rmsd is None else outcome.rmsd.tolist(),
            "num_generated": outcome.num_generated, "cpu_s": outcome.cpu_s, "error": outcome.error,
            "validity": list(outcome.validity)}


def _decode(row: dict) -> Outcome:
    rmsd = None if row["rmsd"] is None else np.array(row["rmsd"], dtype=float).reshape(len(row["rmsd"]), -1)
    return Outcome(row["method"], row["key"], rmsd, row["num_generated"], row["cpu_s"], row["error"],
                   tuple(row["validity"]))


class Journal:
    """The journal at ``path``: :meth:`done` reads it, :meth:`record` appends to it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def kept(job: Job) -> bool:
        """Whether ``job``'s outcome goes into a journal."""
        return not job.method.startswith(FILE_PREFIX)

    def done(self, jobs: list[Job]) -> dict[str, Outcome]:
        """The journalled outcomes of ``jobs``, by fingerprint (none when there is no journal)."""
        wanted = {job.fingerprint for job in jobs if self.kept(job)}
        found: dict[str, Outcome] = {}
        if not self.path.is_file():
            return found
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of an interrupted run
                continue
            if row.get("job") in wanted:
                found[row["job"]] = _decode(row["outcome"])
        return found

    def record(self, job: Job, outcome: Outcome) -> None:
        """Append ``job``'s ``outcome`` (flushed at once)."""
        if not self.kept(job):
            return
        with self.path.open("a+b") as handle:
            if handle.tell() > 0:
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":  # an interrupted write: end its line, so this record stays whole
                    handle.write(b"\n")
            handle.write((json.dumps({"job": job.fingerprint, "outcome": _encode(outcome)}) + "\n").encode())

    def remove(self) -> None:
        """Delete the journal (the run's results are written)."""
        self.path.unlink(missing_ok=True)
