"""The benchmark journal: outcomes round-trip, only matching jobs are reused, file methods are not kept."""

import numpy as np
from rdkit import Chem

from confdiff.conformers.evaluation import Job, Outcome
from confdiff.conformers.journal import Journal


def job(method="etkdg", key="CCO", seed=1, model=None):
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    return Job(method, key, mol, (mol,), 4, seed, None, model)


def test_outcomes_round_trip_and_only_matching_jobs_are_reused(tmp_path):
    journal = Journal(tmp_path / "run.jsonl")
    assert journal.done([job()]) == {}
    rmsd = np.array([[0.1, np.nan, 2.0], [0.3, 0.4, 0.5]])
    first, failed = job(), job(key="CCN")
    journal.record(first, Outcome("etkdg", "CCO", rmsd, 3, 0.25, None, (3, 3, 1, 1)))
    journal.record(failed, Outcome("etkdg", "CCN", None, 0, 0.1, "no conformers generated"))
    done = journal.done([first, failed, job(seed=2)])
    assert set(done) == {first.fingerprint, failed.fingerprint}
    back = done[first.fingerprint]
    np.testing.assert_array_equal(back.rmsd, rmsd)
    assert (back.num_generated, back.cpu_s, back.error, back.validity) == (3, 0.25, None, (3, 3, 1, 1))
    assert done[failed.fingerprint].rmsd is None and done[failed.fingerprint].error == "no conformers generated"
    with journal.path.open("a") as handle:
        handle.write('{"job": "cut short')  # an interrupted write
    later = job(seed=3)
    journal.record(later, Outcome("etkdg", "CCO", None, 0, 0.1, "x"))
    assert set(journal.done([first, later])) == {first.fingerprint, later.fingerprint}
    journal.remove()
    assert not journal.path.exists()


def test_file_methods_are_not_journalled_and_a_rewritten_model_is_a_new_job(tmp_path):
    journal = Journal(tmp_path / "run.jsonl")
    journal.record(job(method="file:x.sdf"), Outcome("file:x.sdf", "CCO", None, 0, None, "x"))
    assert not journal.path.exists()
    model = tmp_path / "model.pt"
    model.write_bytes(b"one")
    before = job(model=str(model)).fingerprint
    model.write_bytes(b"other weights")
    assert job(model=str(model)).fingerprint != before
