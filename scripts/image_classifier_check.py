"""Class-conditional digits samples judged by a classifier trained on the digits TRAINING split.

    python scripts/image_classifier_check.py [--model PATH] [--per-class 20] [--guidance 3]
        [--samplers heun,ddim,...] [--steps 50] [--time-grid edm] [--no-clip] [--out results.json]

For each sampler: ``per_class`` samples of every class with classifier-free guidance ``w``,
quantised back to the 17 pixel levels, classified by an RBF SVC fitted on the 1500 training
digits (its accuracy on the 297 test digits is printed as the reference). Prints and writes the
share of samples labelled as the requested class.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sklearn.svm import SVC

from confdiff.diffusion.samplers import SAMPLERS
from confdiff.images import ImageModel, load_dataset, sample_images, to_levels

# rk45: a looser tolerance than the core's 1e-5
# (the core's default 2e-5 assumes sigma_min = 0.01; here sigma(1e-4) = 0.002)
OPTIONS = {"rk45": {"rtol": 1e-3, "atol": 1e-3}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--samplers", default=",".join(sorted(SAMPLERS)))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--time-grid", default="edm")
    parser.add_argument("--no-clip", dest="clip", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    clf = SVC().fit(train.levels.reshape(len(train), -1).numpy(), train.labels.numpy())
    test_acc = float((clf.predict(test.levels.reshape(len(test), -1).numpy()) == test.labels.numpy()).mean())
    print(f"classifier accuracy on the digits test split: {test_acc:.3f}")

    model = ImageModel.from_checkpoint(args.model)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    results = {"test_accuracy": test_acc, "guidance": args.guidance, "steps": args.steps, "clip": args.clip,
               "time_grid": args.time_grid,
               "per_class": args.per_class, "samplers": {}}
    for name in args.samplers.split(","):
        t0 = time.time()
        images = sample_images(model, len(labels), sampler=name, steps=args.steps, labels=labels,
                               guidance=args.guidance, seed=args.seed, time_grid_kind=args.time_grid, clip=args.clip,
                               sampler_options=OPTIONS.get(name))
        pixels = to_levels(2.0 * images - 1.0, model.num_levels).reshape(len(images), -1).numpy()
        pred = clf.predict(pixels)
        share = float((pred == labels.numpy()).mean())
        per_class = [float((pred[labels.numpy() == c] == c).mean()) for c in range(10)]
        results["samplers"][name] = {"share": share, "per_class": per_class, "seconds": round(time.time() - t0, 1)}
        print(f"{name:>20s}: {share:.3f} labelled as requested  ({time.time() - t0:.0f} s)  per class "
              + " ".join(f"{p:.2f}" for p in per_class), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
