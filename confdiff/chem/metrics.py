"""Symmetry-aware heavy-atom RMSD between conformer ensembles, and the GEOM COV / MAT metrics.

``rmsd_matrix`` gives the same numbers as RDKit's ``rdMolAlign.GetBestRMS`` on hydrogen-stripped
copies (probe = generated, reference = reference conformer), but finds the atom matches once per
pair of molecular graphs and aligns all conformer pairs under all matches as one batched Kabsch
problem (Kabsch, Acta Cryst. A32, 922, 1976). COV / MAT follow Ganea et al. (GeoMol, NeurIPS 2021)
and Jing et al. (torsional diffusion, NeurIPS 2022), with NaN-aware minima and means.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolAlign

__all__ = [
    "Ensemble",
    "best_rms",
    "coverage_curve",
    "coverage_matching",
    "rmsd_matrices",
    "rmsd_matrix",
]

Ensemble = Chem.Mol | Sequence[Chem.Mol]
"""Conformers: one molecule with K conformers, or a sequence of molecules (each with its own graph)."""

MAX_MATCHES = 1_000_000  # GetBestRMS's default
_BLOCK = 1 << 17  # (match, reference, probe) triples aligned per numpy step

# RDKit MolAlign::details::symmetrizeTerminalAtoms: the terminal O / N of conjugated groups such
# as nitro and carboxylate become interchangeable (GetBestRMS's symmetrizeConjugatedTerminalGroups).
_TERMINAL_SMARTS = "[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]"
_SINGLE_OR_DOUBLE_SMARTS = "*-,=*"


def best_rms(probe: Chem.Mol, ref: Chem.Mol, probe_conf_id: int = -1, ref_conf_id: int = -1) -> float:
    """Heavy-atom, symmetry-aware RMSD (A) as ``rdMolAlign.GetBestRMS`` on H-stripped copies.

    Returns NaN when RDKit cannot align the two (no substructure match, e.g. a broken fragment).
    The inputs are not modified.
    """
    try:
        p = Chem.RemoveHs(Chem.Mol(probe, confId=probe_conf_id))
        r = Chem.RemoveHs(Chem.Mol(ref, confId=ref_conf_id))
        return float(rdMolAlign.GetBestRMS(p, r))
    except (RuntimeError, ValueError):
        return float("nan")


def _graph_key(mol: Chem.Mol) -> tuple:
    """Everything substructure matching of a molecule against a molecule looks at."""
    atoms = tuple(
        (a.GetAtomicNum(), a.GetFormalCharge(), a.GetIsotope(), a.GetNumRadicalElectrons(), a.GetIsAromatic(),
         a.GetTotalNumHs())
        for a in mol.GetAtoms()
    )
    bonds = tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondType())) for b in mol.GetBonds()))
    return atoms, bonds


def _heavy_groups(ensemble: Ensemble) -> tuple[int, list[tuple[Chem.Mol, list[int], np.ndarray]]]:
    """Flatten ``ensemble`` into heavy-atom graphs: (number of conformers, [(mol, conformer ids, coords (k, n, 3))]).

    Conformers whose molecule cannot be H-stripped are left out (their RMSDs stay NaN).
    """
    mols = [ensemble] if isinstance(ensemble, Chem.Mol) else list(ensemble)
    groups: dict[tuple, tuple[Chem.Mol, list[int], list[np.ndarray]]] = {}
    count = 0
    for mol in mols:
        confs = list(mol.GetConformers())
        try:
            heavy = Chem.RemoveHs(mol)
        except (RuntimeError, ValueError):
            count += len(confs)
            continue
        entry = groups.setdefault(_graph_key(heavy), (heavy, [], []))
        for conf in heavy.GetConformers():
            entry[1].append(count)
            entry[2].append(conf.GetPositions())
            count += 1
    return count, [(mol, ids, np.stack(xyz)) for mol, ids, xyz in groups.values()]


def _symmetrized(mol: Chem.Mol) -> Chem.Mol:
    query = Chem.RWMol(mol)
    either = Chem.MolFromSmarts(_SINGLE_OR_DOUBLE_SMARTS).GetBondWithIdx(0)
    for terminal, centre in mol.GetSubstructMatches(Chem.MolFromSmarts(_TERMINAL_SMARTS)):
        query.GetAtomWithIdx(terminal).SetFormalCharge(0)
        query.ReplaceBond(query.GetBondBetweenAtoms(terminal, centre).GetIdx(), either)
    return query


def _matches(probe: Chem.Mol, ref: Chem.Mol, max_matches: int = MAX_MATCHES) -> np.ndarray:
    """The atom matches GetBestRMS tries (at most ``max_matches``): (M, n_probe) reference atom index per probe atom."""
    params = Chem.SubstructMatchParameters()
    params.uniquify = False
    params.useChirality = False
    params.maxMatches = max_matches
    matches = ref.GetSubstructMatches(_symmetrized(probe), params)
    return np.array(matches, dtype=np.int64).reshape(len(matches), probe.GetNumAtoms())


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-2, keepdims=True)


def _kabsch_rmsd(probe: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Optimal-superposition RMSD of centred ``probe`` (L, n, 3) against centred ``ref`` (M, K, n, 3) -> (M, K, L).

    msd = (|P|^2 + |R|^2 - 2 (s1 + s2 + sign(det H) s3)) / n, with s the singular values of the
    covariance H = P^T R; no reflections, as RDKit's AlignPoints.
    """
    m, k, n, _ = ref.shape
    num_probe = probe.shape[0]
    cov = probe.transpose(0, 2, 1).reshape(num_probe * 3, n) @ ref.transpose(2, 0, 1, 3).reshape(n, m * k * 3)
    cov = cov.reshape(num_probe, 3, m * k, 3).transpose(2, 0, 1, 3)  # (M K, L, 3, 3)
    s = np.linalg.svd(cov, compute_uv=False)
    trace = s[..., 0] + s[..., 1] + np.sign(np.linalg.det(cov)) * s[..., 2]
    sq = (probe**2).sum(axis=(1, 2))[None, :] + (ref**2).sum(axis=(2, 3)).reshape(m * k, 1) - 2 * trace
    return np.sqrt(np.clip(sq, 0.0, None) / n).reshape(m, k, num_probe)


def _best_rmsd_block(probe: np.ndarray, ref: np.ndarray, matches: np.ndarray) -> np.ndarray:
    """min over matches of the aligned RMSD: probe (L, n, 3), ref (K, n_ref, 3), matches (M, n) -> (K, L)."""
    probe = _centred(probe)
    best = np.full((ref.shape[0], probe.shape[0]), np.inf)
    per_step = max(1, _BLOCK // max(1, probe.shape[0]))
    match_step = max(1, min(len(matches), per_step))
    ref_step = max(1, per_step // match_step)
    for m0 in range(0, len(matches), match_step):
        idx = matches[m0 : m0 + match_step]
        for k0 in range(0, ref.shape[0], ref_step):
            mapped = _centred(ref[k0 : k0 + ref_step][:, idx].transpose(1, 0, 2, 3))  # (M, k, n, 3)
            rmsd = _kabsch_rmsd(probe, mapped).min(axis=0)
            best[k0 : k0 + ref_step] = np.minimum(best[k0 : k0 + ref_step], rmsd)
    return best


def rmsd_matrix(ref_mol: Ensemble, gen_mol: Ensemble, max_matches: int = MAX_MATCHES) -> np.ndarray:
    """Heavy-atom symmetry-aware RMSD (A) of every reference conformer to every generated one, (K, L).

    Equal to ``best_rms(gen, ref)`` entry by entry (GetBestRMS with its defaults: all substructure
    matches up to 10^6, conjugated terminal groups symmetrised); NaN where the two graphs do not match.
    ``max_matches`` bounds the symmetry matches tried (the cost grows with them; a smaller bound can
    only give larger RMSDs, for molecules with more symmetry matches than it).
    """
    num_ref, ref_groups = _heavy_groups(ref_mol)
    num_gen, gen_groups = _heavy_groups(gen_mol)
    out = np.full((num_ref, num_gen), np.nan)
    for ref_graph, ref_ids, ref_xyz in ref_groups:
        for gen_graph, gen_ids, gen_xyz in gen_groups:
            matches = _matches(gen_graph, ref_graph, max_matches)
            if len(matches):
                out[np.ix_(ref_ids, gen_ids)] = _best_rmsd_block(gen_xyz, ref_xyz, matches)
    return out


def _rmsd_job(pair: tuple[Ensemble, Ensemble]) -> np.ndarray:
    return rmsd_matrix(*pair)


def rmsd_matrices(pairs: Sequence[tuple[Ensemble, Ensemble]], num_workers: int = 1) -> list[np.ndarray]:
    """``rmsd_matrix(ref, gen)`` for many molecules, over a pool of ``num_workers`` processes."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    pairs = list(pairs)
    if num_workers == 1 or len(pairs) <= 1:
        return [_rmsd_job(pair) for pair in pairs]
    # largest molecules first, so that no worker is left with a big one at the end
    order = sorted(range(len(pairs)), key=lambda i: -_num_conformers(pairs[i][0]) * _num_conformers(pairs[i][1]))
    with multiprocessing.get_context().Pool(min(num_workers, len(pairs))) as pool:
        results = pool.map(_rmsd_job, [pairs[i] for i in order], chunksize=1)
    out: list[np.ndarray] = [np.empty(0)] * len(pairs)
    for i, result in zip(order, results):
        out[i] = result
    return out


def _num_conformers(ensemble: Ensemble) -> int:
    mols = [ensemble] if isinstance(ensemble, Chem.Mol) else ensemble
    return sum(m.GetNumConformers() for m in mols)


def _nanmin(x: np.ndarray, axis: int) -> np.ndarray:
    """NaN-ignoring minimum; NaN where a whole slice is NaN or empty."""
    if x.shape[axis] == 0:
        return np.full(x.shape[1 - axis], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmin(x, axis=axis)


def _nanmean(x: np.ndarray) -> float:
    return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else float("nan")


def _check_matrix(rmsd: np.ndarray) -> np.ndarray:
    rmsd = np.asarray(rmsd, dtype=float)
    if rmsd.ndim != 2:
        raise ValueError(f"rmsd must be a (K, L) matrix, got shape {rmsd.shape}")
    return rmsd


def coverage_matching(rmsd: np.ndarray, threshold: float) -> dict[str, float]:
    """COV-R, MAT-R, COV-P, MAT-P of one molecule's (K reference, L generated) RMSD matrix.

    COV-R: share of references whose closest generated conformer is below ``threshold``;
    MAT-R: mean over references of that smallest RMSD; COV-P / MAT-P the same from the generated
    side. A reference (or generated conformer) whose RMSDs are all NaN is not covered and is left
    out of the MAT mean. With no generated conformers COV is 0 and MAT is NaN.
    """
    rmsd = _check_matrix(rmsd)
    ref_min, gen_min = _nanmin(rmsd, axis=1), _nanmin(rmsd, axis=0)
    with np.errstate(invalid="ignore"):
        cov_r = float(np.mean(ref_min < threshold)) if ref_min.size else float("nan")
        cov_p = float(np.mean(gen_min < threshold)) if gen_min.size else 0.0
    return {"cov_r": cov_r, "mat_r": _nanmean(ref_min), "cov_p": cov_p, "mat_p": _nanmean(gen_min)}


def coverage_curve(rmsd: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """COV-R and COV-P of one molecule at each of ``thresholds`` (T,): {"cov_r": (T,), "cov_p": (T,)}."""
    rmsd = _check_matrix(rmsd)
    thresholds = np.asarray(thresholds, dtype=float).reshape(-1, 1)
    ref_min, gen_min = _nanmin(rmsd, axis=1), _nanmin(rmsd, axis=0)
    with np.errstate(invalid="ignore"):
        cov_r = np.mean(ref_min[None, :] < thresholds, axis=1) if ref_min.size else np.full(len(thresholds), np.nan)
        cov_p = np.mean(gen_min[None, :] < thresholds, axis=1) if gen_min.size else np.zeros(len(thresholds))
    return {"cov_r": cov_r, "cov_p": cov_p}
