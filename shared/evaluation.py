"""The evaluation harness: every model is measured the same way on the same data.

A model folder's evaluate.py loads its checkpoint and hands this module plain callables for what the model
can do (sample, sample a class, encode, reconstruct, give bits/dim); `evaluate` computes every metric that
applies, prints one table and appends a json record to <run>/eval.jsonl. The math is in shared/metrics.py,
the feature networks in shared/features.py.

Protocol (fixed, so figures compare across models):
  * reference set: `num` training images (seeded); the real-vs-real floor is FID/KID/precision/recall between
    that set and `num` held-out test images: the value a perfect model of the training data would get;
  * samples: `num` images from the model (seeded); features from the dataset's classifier (or Inception);
  * reconstruction / representation / likelihood on held-out test images (up to `num`);
  * disentanglement on `shapes` only, from the dataset's ground-truth factors;
  * memorisation: each sample's nearest neighbour among up to MEMORISATION_REFERENCE training images;
  * out-of-distribution detection (`ood=` / `--ood DATASET`, models with bits/dim): the AUROC of bits/dim at
    telling the held-out images from up to `num` test images of another dataset, brought to the model's
    channels and size (`as_channels`).
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from shared import metrics
from shared.data import ImageData, load_dataset, to_float
from shared.features import Extractor, classifier_extractor

Images = torch.Tensor  # (N, C, H, W) float in [-1, 1]
MEMORISATION_REFERENCE = 10_000  # training images searched for near-copies (bounds the feature-extraction cost)


@dataclass
class Capabilities:
    """What a model can do; None where it can't. All take/return images in [-1, 1]."""
    sample: Callable[[int, torch.Generator], Images] | None = None  # n -> n samples
    sample_class: Callable[[torch.Tensor, torch.Generator], Images] | None = None  # labels (n,) -> samples
    encode: Callable[[Images], torch.Tensor] | None = None  # images -> latents / features (n, d)
    reconstruct: Callable[[Images], Images] | None = None  # images -> reconstructions
    bits_per_dim: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 images -> bits/dim (n,)


def subset(data: ImageData, n: int, seed: int) -> ImageData:
    """n images of `data` chosen without replacement (seeded), with labels and factors."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[: min(n, len(data))]
    return ImageData(data.images[idx], data.labels[idx], data.classes,
                     None if data.factors is None else data.factors[idx], data.factor_names, data.factor_sizes)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def in_batches(fn: Callable[[Images], torch.Tensor], images: Images, batch_size: int = 250) -> torch.Tensor:
    """fn applied to chunks of images, concatenated."""
    return torch.cat([fn(chunk) for chunk in images.split(batch_size)])


def encode_set(encode: Callable[[Images], torch.Tensor], images_uint8: torch.Tensor) -> torch.Tensor:
    """Flat float32 codes (N, D) of a uint8 image set, encoded in batches."""
    return in_batches(encode, to_float(images_uint8)).flatten(1).float()


def sample_quality(extractor: Extractor, ref: Images, test: Images, fake: Images, memo: Images) -> dict:
    """FID/KID/precision/recall/IS of samples vs the reference set, the real-vs-real floor, memorisation."""
    f_ref, _ = extractor(ref)
    f_test, p_test = extractor(test)
    f_fake, p_fake = extractor(fake)
    kid, kid_std = metrics.kid(f_ref, f_fake, subset_size=min(1000, len(f_fake)))
    kid_floor, _ = metrics.kid(f_ref, f_test, subset_size=min(1000, len(f_test)))
    precision, recall = metrics.precision_recall(f_ref, f_fake)
    floor_p, floor_r = metrics.precision_recall(f_ref, f_test)
    is_mean, is_std = metrics.inception_score(p_fake)
    mem = metrics.nearest_neighbour_memorisation(f_fake, extractor(memo)[0])
    return {"fid": metrics.fid(f_ref, f_fake), "fid_floor": metrics.fid(f_ref, f_test),
            "kid": kid, "kid_std": kid_std, "kid_floor": kid_floor,
            "precision": precision, "recall": recall, "precision_floor": floor_p, "recall_floor": floor_r,
            "is": is_mean, "is_std": is_std, "is_real": metrics.inception_score(p_test)[0],
            "memorised_fraction": mem["fraction_flagged"]}


def conditional_quality(extractor: Extractor, sample_class: Callable, num: int, num_classes: int,
                        gen: torch.Generator) -> dict:
    """Accuracy of the dataset classifier on samples of each requested class."""
    labels = torch.arange(num) % num_classes
    fake = torch.cat([sample_class(y, gen) for y in labels.split(250)])
    pred = extractor(fake)[1].argmax(1)
    overall, per_class = metrics.class_accuracy(pred, labels, num_classes)
    return {"class_accuracy": overall, "class_accuracy_per_class": per_class}


def representation(encode: Callable, train: ImageData, test: ImageData) -> dict:
    """Linear-probe and k-NN accuracy of frozen encoder features on labels."""
    z_train, z_test = encode_set(encode, train.images), encode_set(encode, test.images)
    return {"linear_probe": metrics.linear_probe_accuracy(z_train, train.labels, z_test, test.labels),
            "knn": metrics.knn_accuracy(z_train, train.labels, z_test, test.labels)}


def disentanglement(encode: Callable, test: ImageData, image_size: int) -> dict:
    """MIG and the FactorVAE score on the shapes factors (shapes only)."""
    from shared import shapes

    represent = lambda f: encode_set(encode, shapes.render(f, image_size))
    return {"mig": metrics.mutual_info_gap(encode_set(encode, test.images), test.factors, list(test.factor_sizes)),
            "factor_vae": metrics.factor_vae_score(represent, shapes.sample_factors, list(test.factor_sizes))}


def as_channels(images_uint8: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) with `channels` channels: RGB -> grey by the ITU-R 601 luma weights, grey -> RGB by
    repetition (so an MNIST model can be shown shapes and the other way round)."""
    c = images_uint8.shape[1]
    if c == channels:
        return images_uint8
    if c == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images_uint8.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if c == 1 and channels == 3:
        return images_uint8.expand(-1, 3, -1, -1).contiguous()
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def out_of_distribution(bits_per_dim: Callable[[torch.Tensor], torch.Tensor], held: ImageData, ood: str,
                        data_root: str | None, image_size: int, num: int, seed: int) -> dict:
    """bits/dim of up to `num` test images of dataset `ood` (in the model's channels and size) against the
    held-out in-distribution images: the AUROC of bits/dim as an anomaly score (metrics.auroc) and both means."""
    other = subset(load_dataset(ood, data_root if ood == "mnist" or ood.startswith("folder:") else None,
                                image_size, "test", seed=0), num, seed + 3)
    score = lambda images: torch.cat([bits_per_dim(x) for x in images.split(250)]).double()
    s_in, s_out = score(held.images), score(as_channels(other.images, held.channels))
    return {"ood_dataset": ood, "ood_bits_per_dim": s_out.mean().item(), "ood_in_bits_per_dim": s_in.mean().item(),
            "ood_auroc": metrics.auroc(s_in, s_out)}


def run_dir_of(checkpoint_path: str | Path) -> Path:
    """The run folder of a checkpoint path (a run folder itself, or <run>/checkpoints/<file>.pt)."""
    p = Path(checkpoint_path)
    return p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent


def train_throughput(run_dir: str | Path) -> float | None:
    """Median training images/s logged in <run>/metrics.jsonl (None if the run has no log)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    values = [r["images_per_s"] for r in map(json.loads, path.read_text().splitlines()) if r.get("images_per_s")]
    return float(torch.tensor(values).median()) if values else None


def evaluate(model: str, family: str, caps: Capabilities, *, dataset: str, data_root: str | None, image_size: int,
             num: int = 2000, seed: int = 0, run_dir: str | Path | None = None, params: int | None = None,
             train_images_per_s: float | None = None, extractor: Extractor | None = None,
             memorisation_reference: int = MEMORISATION_REFERENCE, log: Callable[[str], None] = print,
             extra: Callable[[dict, ImageData, ImageData], dict] | None = None, ood: str = "") -> dict:
    """Every metric that applies to `caps`; prints a table, appends to <run_dir>/eval.jsonl, returns the record.

    Memorisation searches subset(train, memorisation_reference, seed + 2) for each sample's nearest neighbour.
    `extra(record, reference_set, held_out_set)` may return a folder's own figures (e.g. baselines), added to
    the record before it is printed and written. `ood` names a dataset for out_of_distribution (needs
    caps.bits_per_dim; ValueError otherwise).
    """
    if ood and caps.bits_per_dim is None:
        raise ValueError(f"--ood {ood} needs a model that gives bits/dim; {model} does not")
    torch.manual_seed(seed)
    train = load_dataset(dataset, data_root, image_size, "train", seed=0)
    test = load_dataset(dataset, data_root, image_size, "test", seed=0)
    if extractor is None and (dataset == "cifar10" or dataset.startswith("folder:")):
        log("no --inception-weights given: FID etc. use the dataset's classifier features, not Inception-v3")
    extractor = extractor or classifier_extractor(train, test, dataset, log=log)
    ref, held = subset(train, num, seed), subset(test, num, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    record: dict = {"model": model, "family": family, "dataset": dataset, "image_size": image_size,
                    "num_samples": num, "extractor": extractor.name, "params": params,
                    "train_images_per_s": train_images_per_s}
    if caps.sample is not None:
        fake, seconds = timed(lambda: caps.sample(num, gen))
        record["sample_images_per_s"] = num / seconds
        memo = subset(train, memorisation_reference, seed + 2)
        record.update(sample_quality(extractor, to_float(ref.images), to_float(held.images), fake.float(),
                                     to_float(memo.images)))
        record["num_samples"] = len(fake)
    if caps.sample_class is not None:
        record.update(conditional_quality(extractor, caps.sample_class, num, train.num_classes, gen))
    if caps.reconstruct is not None:
        x = to_float(held.images)
        record["mse"], record["psnr"] = metrics.mse_psnr(x, in_batches(caps.reconstruct, x))
    if caps.encode is not None:
        record.update(representation(caps.encode, ref, held))
        if held.factors is not None:
            record.update(disentanglement(caps.encode, held, image_size))
    if caps.bits_per_dim is not None:
        record["bits_per_dim"] = torch.cat([caps.bits_per_dim(x) for x in held.images.split(250)]).mean().item()
        if ood:
            record.update(out_of_distribution(caps.bits_per_dim, held, ood, data_root, image_size, num, seed))
    if extra is not None:
        record.update(extra(record, ref, held))
    record["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(record, log)
    if run_dir is not None:
        with open(Path(run_dir) / "eval.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


def print_table(record: dict, log: Callable[[str], None] = print) -> None:
    """The record as an aligned two-column table, floors beside the metrics they bound."""
    log(f"{record['model']} on {record['dataset']} {record['image_size']}x{record['image_size']}, "
        f"{record['num_samples']} samples, features: {record['extractor']}")
    for key, value in record.items():
        if key in ("model", "dataset", "image_size", "num_samples", "extractor") or key.endswith("_floor"):
            continue
        if isinstance(value, float):
            floor = record.get(f"{key}_floor")
            extra = f"   (real-vs-real floor {floor:.4g})" if floor is not None else ""
            log(f"  {key:28s} {value:12.4g}{extra}")
        elif isinstance(value, (int, str)):
            log(f"  {key:28s} {value!s:>12}")


# ----------------------------------------------------------------------------- evaluate.py's command line

@dataclass
class EvalConfig:
    """The flags every evaluate.py shares; a folder subclasses it to set its --checkpoint default."""
    checkpoint: str = "runs/default"  # run folder (its latest checkpoint) or checkpoint file
    num: int = 2000  # samples (and real images per reference set)
    data_root: str = ""  # where the dataset lives (default: the one the run trained with)
    seed: int = 0  # seeds the samples and the real subsets
    inception_weights: str = ""  # local Inception-v3 weights (torchvision or pytorch-fid file) instead of the classifier
    threads: int = 0  # CPU threads (0 = torch's default)
    ood: str = ""  # also score this dataset's test images: AUROC of bits/dim as an anomaly score (likelihood models)


def check_eval_config(cfg: EvalConfig) -> None:
    """ValueError (one line) for values no evaluation can take."""
    if cfg.num < 10 or cfg.threads < 0:
        raise ValueError("--num must be >= 10 and --threads >= 0")
    if cfg.ood:
        from shared.data import check_dataset_name

        check_dataset_name(cfg.ood)


def evaluate_checkpoint(model: str, family: str, caps: Capabilities, cfg: EvalConfig, train_config: dict,
                        params: int, **kwargs) -> dict:
    """evaluate() with what every evaluate.py passes: the run's dataset and size, the run folder, its logged
    training speed, and Inception features when --inception-weights is given."""
    from shared.features import inception_extractor

    run = run_dir_of(cfg.checkpoint)
    return evaluate(model, family, caps, dataset=train_config["dataset"],
                    data_root=cfg.data_root or train_config.get("data_root") or None,
                    image_size=train_config["image_size"], num=cfg.num, seed=cfg.seed, run_dir=run, params=params,
                    train_images_per_s=train_throughput(run),
                    extractor=inception_extractor(cfg.inception_weights) if cfg.inception_weights else None,
                    **({"ood": cfg.ood} if cfg.ood else {}), **kwargs)


def cli_main(config_cls: type, main: Callable[[EvalConfig], dict], argv: list[str] | None = None) -> None:
    """An evaluate.py's `__main__`: parse the flags, set the threads, run main, errors as one line (exit 2)."""
    from shared import checkpoint, cli
    from shared.data import DataError

    cfg = cli.parse(config_cls, argv, check=check_eval_config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        main(cfg)
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
