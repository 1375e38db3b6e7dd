"""Evaluate a CycleGAN checkpoint: translations against ground truth, classifier accuracy and FID.

    python evaluate.py --checkpoint runs/cyclegan --num 2000

On the first --num held-out test images of each domain (the built-in pairs know each image's true counterpart):
  translation_mse_ab / _ba   per-pixel MSE of G_AB(a) against the true b (and G_BA(b) against a), images in
                             [-1, 1]; translation_mse is their mean. copy_mse_* is the same for the untranslated
                             input (the do-nothing baseline), cycle_mse_* for the reconstruction G_BA(G_AB(a)) vs a.
  translation_accuracy_ab    accuracy of a classifier trained on domain B's own images (outline shapes,
                             inverted digits) on G_AB(a), against a's label: the shape / digit must survive;
                             _ba the same with domain A's classifier; translation_accuracy is their mean.
  fid (= fid_ab), fid_ba     FID of the translations against the target domain's real test images, in that
                             domain's classifier features; fid_floor: real training vs real test images of B.
For folder: datasets (no labels, no pairs) the classifier tells domain A from domain B, the accuracy is the share
of translations it puts in the target domain, and there is no MSE. The record goes through shared.evaluation
into <run>/eval.jsonl. Each domain's classifier (shared.features.classifier_extractor) is trained on first use
(about a minute) and cached.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from domains import Domains, load_domains
from model import Generator, translate
from sample import load_generators
from shared import evaluation, metrics
from shared.data import DataError, ImageData, to_float
from shared.evaluation import Capabilities, subset
from shared.features import Extractor, classifier_extractor


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a CycleGAN checkpoint."""
    checkpoint: str = "runs/cyclegan"  # run folder (its latest checkpoint) or checkpoint file


CLASSIFIER_TEST = 2000  # held-out images on which a domain classifier's own accuracy is reported


def domain_classifiers(train: Domains, test: Domains, name: str, log=print) -> tuple[Extractor, Extractor]:
    """(classifier of domain A, classifier of domain B), each trained on that domain's own training images.

    Labelled domains: the dataset's labels (shape class, digit), so the classifier of B reads outlines or inverted
    digits, which the shared classifier of the plain dataset never saw. Unlabelled folders: one classifier of
    domain membership (label 0 = A, 1 = B), used for both directions."""
    if train.paired:  # the built-in pairs: labelled
        return tuple(classifier_extractor(getattr(train, side), subset(getattr(test, side), CLASSIFIER_TEST, 0),
                                          domain_name, log=log) for side, domain_name in zip("ab", train.names))
    both = [ImageData(torch.cat([d.a.images, d.b.images]),
                      torch.cat([torch.zeros(len(d.a), dtype=torch.long), torch.ones(len(d.b), dtype=torch.long)]),
                      ["A", "B"]) for d in (train, test)]
    domain = classifier_extractor(*both, f"{name}-domain", log=log)
    return domain, domain


def direction(G: Generator, G_back: Generator, source: ImageData, target: ImageData, target_train: ImageData,
              extractor: Extractor, paired: bool, target_label: int) -> dict:
    """The figures of one direction: source images -> translations, scored against the target domain. paired:
    target.images[i] is the true translation of source.images[i] and both carry the class label; else the
    extractor is the A-vs-B domain classifier and a translation should land in class target_label."""
    x = to_float(source.images)
    fake = translate(G, x)  # (N, C, H, W)
    out = {"cycle_mse": metrics.mse_psnr(x, translate(G_back, fake))[0]}
    if paired:  # target.images[i] is the ground-truth translation of source.images[i]
        y = to_float(target.images)
        out["translation_mse"], out["copy_mse"] = metrics.mse_psnr(y, fake)[0], metrics.mse_psnr(y, x)[0]
    f_fake, p_fake = extractor(fake)
    labels = source.labels if paired else torch.full((len(fake),), target_label)
    out["translation_accuracy"] = (p_fake.argmax(1) == labels).double().mean().item()
    f_real, f_train = extractor(to_float(target.images))[0], extractor(to_float(target_train.images))[0]
    out["fid"], out["fid_floor"] = metrics.fid(f_real, f_fake), metrics.fid(f_train, f_real)
    return out


def translation_figures(G_AB: Generator, G_BA: Generator, train: Domains, test: Domains, num: int, seed: int,
                        extractors: tuple[Extractor, Extractor]) -> dict:
    """Both directions on `num` held-out images per domain (the same indices in A and B, so pairs stay pairs)."""
    n = min(num, len(test.a), len(test.b))
    idx = torch.randperm(min(len(test.a), len(test.b)), generator=torch.Generator().manual_seed(seed))[:n]
    pick = lambda d: ImageData(d.images[idx], d.labels[idx], d.classes)
    a, b = pick(test.a), pick(test.b)
    ref_a, ref_b = subset(train.a, n, seed + 1), subset(train.b, n, seed + 2)
    ab = direction(G_AB, G_BA, a, b, ref_b, extractors[1], test.paired, target_label=1)
    ba = direction(G_BA, G_AB, b, a, ref_a, extractors[0], test.paired, target_label=0)
    record = {f"{k}_ab": v for k, v in ab.items()} | {f"{k}_ba": v for k, v in ba.items()}
    for key in ("translation_mse", "translation_accuracy"):
        if f"{key}_ab" in record:
            record[key] = (record[f"{key}_ab"] + record[f"{key}_ba"]) / 2
    record["fid"], record["fid_floor"] = record["fid_ab"], record["fid_floor_ab"]  # A -> B vs real B
    record["num_translated"] = n
    return record


def main(cfg: EvalConfig) -> dict:
    if cfg.inception_weights:
        raise DataError("CycleGAN's evaluate.py scores translations in each domain's own classifier features; "
                        "--inception-weights is not supported here")
    G_AB, G_BA, state = load_generators(cfg.checkpoint, "cpu")
    tc = state["config"]
    root = cfg.data_root or tc.get("data_root") or None
    train = load_domains(tc["dataset"], root, tc["image_size"], "train", seed=0, pair=tc.get("pair", "auto"))
    test = load_domains(tc["dataset"], root, tc["image_size"], "test", seed=0, pair=tc.get("pair", "auto"))
    extractors = domain_classifiers(train, test, tc["dataset"])
    extra = lambda record, ref, held: {"pair": " <-> ".join(train.names), **translation_figures(
        G_AB, G_BA, train, test, cfg.num, cfg.seed, extractors)}
    params = sum(p.numel() for G in (G_AB, G_BA) for p in G.parameters())
    run = evaluation.run_dir_of(cfg.checkpoint)  # the arguments evaluate_checkpoint passes, with our extractor
    return evaluation.evaluate("CycleGAN", "GAN", Capabilities(), dataset=tc["dataset"], data_root=root,
                               image_size=tc["image_size"], num=cfg.num, seed=cfg.seed, run_dir=run, params=params,
                               train_images_per_s=evaluation.train_throughput(run),
                               extractor=replace(extractors[1], name=f"{extractors[1].name} (domain B)"),
                               extra=extra)


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
