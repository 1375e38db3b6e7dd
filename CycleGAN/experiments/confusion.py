"""Which shape does each domain's classifier read in a run's translations? (README, the default run.)

    python experiments/confusion.py runs/leaderboard/shapes --num 600

Prints, for the first --num held-out shapes pairs, the accuracy and the confusion matrix (rows = true shape:
square, circle, triangle; columns = the classifier's reading) of G_BA(b) under the filled-shape classifier, of
G_AB(a) under the outline classifier, and of the raw outlines and raw filled images under the filled-shape
classifier (the do-nothing baselines). The classifiers come from evaluate.py's cache (trained there on first use).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from domains import load_domains  # noqa: E402
from evaluate import domain_classifiers  # noqa: E402
from model import translate  # noqa: E402
from sample import load_generators  # noqa: E402
from shared.data import to_float  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--num", type=int, default=600)
    args = p.parse_args()
    torch.set_num_threads(1)
    G_AB, G_BA, state = load_generators(args.run, "cpu")
    size = state["config"]["image_size"]
    train, test = (load_domains("shapes", None, size, split) for split in ("train", "test"))
    clf_a, clf_b = domain_classifiers(train, test, "shapes")
    a, b, y = to_float(test.a.images[:args.num]), to_float(test.b.images[:args.num]), test.a.labels[:args.num]
    for name, clf, x in (("G_BA(b), filled classifier", clf_a, translate(G_BA, b)),
                         ("G_AB(a), outline classifier", clf_b, translate(G_AB, a)),
                         ("raw outlines b, filled classifier", clf_a, b), ("raw filled a, filled classifier", clf_a, a)):
        pred = clf(x)[1].argmax(1)
        confusion = torch.zeros(3, 3, dtype=torch.long)
        for t, q in zip(y, pred):
            confusion[t, q] += 1
        print(f"{name}: accuracy {(pred == y).float().mean():.3f}, confusion {confusion.tolist()}")


if __name__ == "__main__":
    main()
