"""Quality against cost for the models of a size sweep: a Markdown table and a plot.

    python scripts/plot_size_sweep.py \
        --run tiny:6034:'docs/bench/micro_pilot86_tiny_seed*.json' \
        --run small:12925:'docs/bench/micro_pilot86_small_seed*.json' \
        --teacher 0.644:0.691 --out docs/bench/size_sweep_pilot86.png

Each ``--run NAME:PARAMETERS:GLOB`` names one model and the ``confdiff benchmark --json`` files of
its micro-set runs (one per seed, each with the methods ``confdiff:none`` and ``confdiff``). The
table gives, per model, the mean over the files of COV-R / MAT-R of the plain output and COV-R /
MAT-R / COV-P of the default output, the spread of the default COV-R between seeds, and the CPU
milliseconds per conformer of the default output as measured by the benchmark itself
(``1000 / confs_per_cpu_s``, mean over the seeds). ``--teacher COV:MAT`` draws the teacher's COV-R
and MAT-R as horizontal lines.
"""

from __future__ import annotations

import argparse
import glob
import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SweepPoint:
    """One model's micro-set figures, means over seeds."""

    name: str
    parameters: int
    seeds: int
    plain_cov_r: float
    plain_mat_r: float
    cov_r: float
    cov_r_min: float
    cov_r_max: float
    mat_r: float
    cov_p: float
    ms_per_conformer: float


def load_point(spec: str) -> SweepPoint:
    """``NAME:PARAMETERS:GLOB`` -> the model's point; a ``ValueError`` when no file matches."""
    name, parameters, pattern = spec.split(":", 2)
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(f"--run {name}: no file matches {pattern!r}")
    runs = [json.load(open(p))["methods"] for p in paths]

    def mean(method: str, key: str) -> float:
        return float(np.mean([r[method][key] for r in runs]))

    cov_r = [r["confdiff"]["cov_r_mean"] for r in runs]
    return SweepPoint(
        name, int(parameters), len(paths), mean("confdiff:none", "cov_r_mean"), mean("confdiff:none", "mat_r_mean"),
        float(np.mean(cov_r)), min(cov_r), max(cov_r), mean("confdiff", "mat_r_mean"), mean("confdiff", "cov_p_mean"),
        float(np.mean([1000.0 / r["confdiff"]["confs_per_cpu_s"] for r in runs])))


def markdown_table(points: list[SweepPoint]) -> str:
    lines = ["| model | parameters | seeds | plain COV-R / MAT-R | default COV-R (min-max) / MAT-R / COV-P "
             "| ms CPU / conformer |", "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p.name} | {p.parameters:,} | {p.seeds} | {p.plain_cov_r:.3f} / {p.plain_mat_r:.3f} "
                     f"| {p.cov_r:.3f} ({p.cov_r_min:.3f}-{p.cov_r_max:.3f}) / {p.mat_r:.3f} / {p.cov_p:.3f} "
                     f"| {p.ms_per_conformer:.1f} |")
    return "\n".join(lines)


def plot(points: list[SweepPoint], teacher: tuple[float, float] | None, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    cost = [p.ms_per_conformer for p in points]
    for ax, (plain, default, label) in zip(axes, [("plain_cov_r", "cov_r", "COV-R (0.75 A), higher is better"),
                                                   ("plain_mat_r", "mat_r", "MAT-R (A), lower is better")]):
        ax.plot(cost, [getattr(p, default) for p in points], "o-", label="default (guidance + gate)")
        ax.plot(cost, [getattr(p, plain) for p in points], "s--", label="plain (--guidance none)")
        if default == "cov_r":
            ax.vlines(cost, [p.cov_r_min for p in points], [p.cov_r_max for p in points], colors="C0", alpha=0.4)
        if teacher is not None:
            ax.axhline(teacher[0 if default == "cov_r" else 1], color="grey", ls=":", label="teacher (ETKDGv3 + MMFF94)")
        for p in points:
            ax.annotate(f"{p.name} ({p.parameters:,})", (p.ms_per_conformer, getattr(p, default)), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log")
        ax.set_xticks(cost, [f"{c:.0f}" for c in cost])  # one tick per model
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("CPU ms per conformer (one thread)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("Micro set, mean of the seeds: quality against cost by model size", fontsize=10)
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME:PARAMETERS:GLOB")
    parser.add_argument("--teacher", metavar="COV:MAT", help="the teacher's micro COV-R and MAT-R")
    parser.add_argument("--out", help="write the plot here (PNG)")
    args = parser.parse_args(argv)
    points = sorted((load_point(spec) for spec in args.run), key=lambda p: p.ms_per_conformer)
    print(markdown_table(points))
    if args.out:
        teacher = tuple(float(v) for v in args.teacher.split(":")) if args.teacher else None
        plot(points, teacher, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
