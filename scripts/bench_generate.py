"""Conformers per CPU second and peak memory: ``ConformerGenerator`` against RDKit ETKDGv3, one thread.

    python scripts/bench_generate.py                       # data/examples/molecules.sdf, n=50, 20 steps
    python scripts/bench_generate.py -n 100 --steps 10 --model run/conformer_model.pt
    python scripts/bench_generate.py --oversample 1 --steps 10 --sampler ddim   # the fast recipe (README)
    python scripts/bench_generate.py --large               # a 151-heavy-atom molecule with n=500
    python scripts/bench_generate.py --parallel 2 --threads 0   # 2 confdiff processes side by side, torch's threads
    python scripts/bench_generate.py --mode refine         # the refine sampling mode
    python scripts/bench_generate.py --polish-steps 30     # with the torsion polish
    python scripts/bench_generate.py --polish-steps 30 --keep-unpolished   # choosing from both versions

Each method runs in its own child process (``torch.set_num_threads(1)``, ETKDG with one thread) on
the same molecules, so its CPU time and peak resident memory are its own; the script prints both and
the ratio of CPU time per conformer. The confdiff child also splits its CPU time into the pipeline's
stages (ETKDG seeds, their MMFF94 minimisation, featurisation, stereo checks, Batch construction,
score model, torsion application, the validity gate, the energies of the physics guidance and of
the oversampled draws' ranking, the diverse selection's RMSD matrix, the torsion polish with the
force-field calls it makes, the rest of the sampler and the assembly of the result).
``--threads`` sets the confdiff child's ``num_threads`` (0: torch's default, all cores);
``--parallel P`` runs P confdiff children at once, as a user who parallelises over processes does.
Without ``--model`` the shipped checkpoint is used, or, while there is none, a randomly initialised
ScoreModel of the default configuration (the same cost as a trained one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from confdiff.conformers.modes import DEFAULT_MODE, MODES

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _molecules(path: str) -> list:
    from rdkit import Chem

    return [m for m in Chem.SDMolSupplier(path, removeHs=False) if m is not None]


def _large_molecule():
    """A 151-heavy-atom molecule (Ala30, 303 atoms with hydrogens)."""
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSequence("A" * 30))
    mol.SetProp("_Name", "Ala30")
    return mol


def run_etkdg(args) -> dict:
    from rdkit.Chem import rdDistGeom

    baseline = _peak_rss_mb()
    conformers = 0
    start = time.process_time()
    for mol in _molecules(args.molecules):
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = 0xF00D
        params.numThreads = 1
        work = type(mol)(mol)
        work.RemoveAllConformers()
        conformers += len(rdDistGeom.EmbedMultipleConfs(work, args.n, params))
    return {"cpu_s": time.process_time() - start, "conformers": conformers, "peak_rss_mb": _peak_rss_mb(),
            "baseline_rss_mb": baseline}


_DEPTH = [0]  # timed calls in progress: a stage called inside another one counts as the outer stage


def _timed(table: dict, key: str, fn):
    def wrapper(*a, **k):
        if _DEPTH[0]:
            return fn(*a, **k)
        _DEPTH[0] += 1
        start = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            table[key] += time.process_time() - start
            _DEPTH[0] -= 1

    return wrapper


def run_confdiff(args) -> dict:
    import torch

    from confdiff.cli.generate import keep_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `confdiff generate` does
    import confdiff.conformers.diffusion as diffusion_module
    from confdiff.conformers import generator as conformers
    from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM
    from confdiff.conformers.diffusion import ConformerDiffusion
    from confdiff.conformers import physics
    from confdiff.nn.score_model import ScoreModel, ScoreModelConfig

    model = args.model
    if model is None and not conformers.default_model_path().exists():
        torch.manual_seed(0)
        model = (ScoreModel(ScoreModelConfig(node_feature_dim=ATOM_FEATURE_DIM, edge_feature_dim=BOND_FEATURE_DIM)),
                 ConformerDiffusion())
    large = args.child == "large"
    per_seed = {"conformers_per_seed": args.large_conformers_per_seed} if large else {}  # else the default
    generator = conformers.ConformerGenerator(
        model, device="cpu", steps=args.steps, sampler=args.sampler, max_atoms_per_batch=args.batch_size,
        num_threads=args.threads or None, oversample=args.oversample, mode=args.mode, polish_steps=args.polish_steps,
        keep_unpolished=args.keep_unpolished, **per_seed)
    mols, n = ([_large_molecule()], args.large_n) if large else (_molecules(args.molecules), args.n)
    next(generator.generate_many(["CCO"], 2, seed=0))  # build lazy tables outside the measurement

    stages: dict[str, float] = defaultdict(float)
    # where each stage's function is looked up at run time: (namespace, attribute, stage)
    hooks = [
        (conformers, "embed_etkdg", "ETKDG seeds"),
        (conformers, "relax_mmff", "seed minimisation"),
        (conformers, "featurize", "featurisation"),
        (conformers.StereoCheck, "from_mol", "stereo checks"),
        (conformers.StereoCheck, "signs", "stereo checks"),
        (conformers, "_bond_lengths", "stereo checks"),
        (conformers.Batch, "from_data_list", "Batch construction"),
        (ScoreModel, "forward", "score model"),
        (diffusion_module, "apply_torsion_changes", "torsion application"),
        (conformers.ValidityChecker, "from_mol", "validity gate"),
        (conformers.ValidityChecker, "check", "validity gate"),
        (physics.MMFFPotential, "from_mol", "physics (guidance, ranking)"),
        (physics.MMFFPotential, "energy_and_grad", "physics (guidance, ranking)"),
        (physics.RepulsionPotential, "from_mol", "physics (guidance, ranking)"),
        (physics.RepulsionPotential, "energy_and_grad", "physics (guidance, ranking)"),
        (conformers, "farthest_point_conformers", "diverse selection (RMSD)"),
        (conformers, "torsion_descent", "torsion polish (MMFF94 descent)"),
    ]
    for owner, name, stage in hooks:
        fn = getattr(owner, name)
        wrapped = _timed(stages, stage, fn)
        # a classmethod comes back bound to its class: keep it bound by storing a staticmethod
        setattr(owner, name, staticmethod(wrapped) if hasattr(fn, "__self__") else wrapped)
    baseline = _peak_rss_mb()
    start = time.process_time()
    results = list(generator.generate_many(mols, n, seed=0))  # as the CLI runs: consecutive molecules share batches
    per_molecule = [{"name": r.name, "conformers": r.mol.GetNumConformers() if r.ok else 0, "error": r.error}
                    for r in results]
    conformers_made = sum(m["conformers"] for m in per_molecule)
    total = time.process_time() - start
    stages["rest (sampler maths, assembly)"] = total - sum(stages.values())
    return {"cpu_s": total, "conformers": conformers_made, "peak_rss_mb": _peak_rss_mb(),
            "baseline_rss_mb": baseline, "stages": dict(stages), "molecules": per_molecule,
            "model": "random default config" if isinstance(model, tuple) else str(model or "shipped")}


def _child(method: str, copies: int = 1) -> dict:
    """Run ``method`` in ``copies`` child processes at once; the first child's figures, with the
    copies' CPU seconds and conformers summed (``cpu_s`` / ``conformers``)."""
    cmd = [sys.executable, __file__, "--child", method, *sys.argv[1:]]
    env = dict(os.environ)
    if method == "etkdg" or "--threads" not in sys.argv:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(copies)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"{method} child failed:\n{err}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    first = dict(results[0])
    first["cpu_s"] = sum(r["cpu_s"] for r in results)
    first["conformers"] = sum(r["conformers"] for r in results)
    return first


def _print_stages(result: dict) -> None:
    print("confdiff CPU time by stage:")
    for stage, seconds in sorted(result["stages"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<32} {seconds:8.2f} s  {100 * seconds / result['cpu_s']:5.1f} %")
    for m in result["molecules"]:
        print(f"  {m['name']:<28} {m['conformers']:>4} conformers{'  ERROR ' + m['error'] if m['error'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", default=str(REPO / "data" / "examples" / "molecules.sdf"))
    parser.add_argument("-n", type=int, default=50, help="conformers per molecule")
    parser.add_argument("--steps", type=int, default=None, help="reverse-diffusion steps (default: the mode's)")
    parser.add_argument("--sampler", default="euler_maruyama", help="a sampler of confdiff.diffusion.samplers.SAMPLERS")
    parser.add_argument("--model", default=None, help="checkpoint (default: shipped, else random default config)")
    parser.add_argument("--oversample", type=float, default=None, help="draws per conformer (default: the generator's)")
    parser.add_argument("--mode", default=DEFAULT_MODE, choices=MODES, help="the generator's sampling mode")
    parser.add_argument("--polish-steps", type=int, default=0, help="torsion polish steps (default 0: off)")
    parser.add_argument("--keep-unpolished", action="store_true",
                        help="the selection chooses from every draw as drawn and as polished")
    parser.add_argument("--batch-size", type=int, default=20000, help="max atoms per graph batch")
    parser.add_argument("--large", action="store_true",
                        help="instead: confdiff alone on a 151-heavy-atom molecule (peak memory, time)")
    parser.add_argument("--large-n", type=int, default=500, help="conformers of the large molecule")
    parser.add_argument("--large-conformers-per-seed", type=int, default=25,
                        help="ETKDG seeds are the slow part for the large molecule (it needs the random-coordinates fallback)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the confdiff child (0: torch's default)")
    parser.add_argument("--parallel", type=int, default=1, help="confdiff children run side by side")
    parser.add_argument("--child", choices=["etkdg", "confdiff", "large"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_etkdg(args) if args.child == "etkdg" else run_confdiff(args)))
        return
    if args.large:
        r = _child("large")
        print(f"Ala30 (151 heavy atoms, 303 atoms), n={args.large_n}, steps={args.steps or 'default'}, "
              f"--batch-size {args.batch_size} atoms, one thread, model: {r['model']}")
        print(f"{r['conformers']} conformers, {r['cpu_s']:.1f} CPU s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['peak_rss_mb'] - r['baseline_rss_mb']:+.0f} MB over the loaded model)")
        _print_stages(r)
        return

    results = {"etkdg": _child("etkdg"), "confdiff": _child("confdiff", args.parallel)}
    print(f"{len(_molecules(args.molecules))} molecules from {args.molecules}, n={args.n}, "
          f"steps={args.steps or 'default'} ({args.sampler}), "
          f"--batch-size {args.batch_size} atoms, confdiff: {args.parallel} process(es), "
          f"{args.threads or 'default'} torch thread(s), mode {args.mode}, "
          f"polish steps {args.polish_steps}{' (keeping the unpolished draws)' if args.keep_unpolished else ''}")
    print(f"{'method':<10} {'conformers':>10} {'CPU s':>8} {'ms/conf':>8} {'conf/CPU s':>10} {'peak RSS MB':>12} "
          f"{'(+ over start)':>14}")
    for method, r in results.items():
        ms = 1000 * r["cpu_s"] / max(r["conformers"], 1)
        print(f"{method:<10} {r['conformers']:>10} {r['cpu_s']:>8.2f} {ms:>8.2f} {r['conformers'] / r['cpu_s']:>10.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] - r['baseline_rss_mb']:>14.0f}")
    e, c = results["etkdg"], results["confdiff"]
    ratio = (c["cpu_s"] / c["conformers"]) / (e["cpu_s"] / e["conformers"])
    print(f"confdiff / ETKDGv3 CPU time per conformer: {ratio:.2f}  (model: {c['model']})")
    _print_stages(c)


if __name__ == "__main__":
    main()
