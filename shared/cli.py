"""One small helper that turns a dataclass config into argparse flags.

Every train.py subclasses `RunConfig` (the core flags, identical in every model folder) and adds its own
fields; `parse(TrainConfig)` gives `--help`, a flag per field (`batch_size` -> `--batch-size`), and a one-line
error with exit code 2 for bad values. The help text of a flag is the comment written after its field.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass
class RunConfig:
    """Core flags shared by every train.py."""
    dataset: str = "mnist"  # mnist (embedded copy unless --data-root) | shapes | fashion-mnist | cifar10 | folder:PATH
    data_root: str = ""  # folder that holds torchvision datasets (MNIST/ here means the full 60,000 images)
    download: bool = False  # allow torchvision to download the dataset into --data-root
    image_size: int = 32  # images are resized to image_size x image_size
    batch_size: int = 64  # images per step per process
    lr: float = 2e-4  # learning rate
    steps: int = 3000  # training steps (optimizer updates of the main network)
    minutes: float = 0.0  # wall-clock budget: stop and checkpoint after this many minutes (0 = no limit)
    seed: int = 0  # seeds weights, noise and data order
    out: str = "runs/default"  # run folder: config.json, metrics.jsonl, TensorBoard events, samples, checkpoints
    resume: str = ""  # "auto" = latest checkpoint in --out (fresh start if none), or a checkpoint path
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 autocast only where a measured probe says it is faster here)
    threads: int = 0  # CPU threads per process (0 = torch's default)
    sample_every: int = 500  # write a sample grid (fixed noise) every N steps
    ckpt_every: int = 1000  # write a checkpoint every N steps (and always at the end)
    log_every: int = 10  # write scalars to metrics.jsonl and TensorBoard every N steps
    wandb: bool = False  # also log scalars and sample grids to Weights & Biases (pip install wandb; WANDB_MODE=offline works)
    wandb_project: str = "generative-models"  # W&B project (the run is named after --out)


def check_run_config(cfg: RunConfig) -> None:
    """Raise ValueError (one line) for core values no model can take."""
    from shared.data import check_dataset_name  # local import: keeps `--help` fast

    check_dataset_name(cfg.dataset)
    positive = ["image_size", "batch_size", "steps", "sample_every", "ckpt_every", "log_every"]
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if not cfg.lr > 0:  # also refuses nan
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if cfg.minutes < 0 or cfg.threads < 0:
        raise ValueError("--minutes and --threads must be >= 0")
    for name, allowed in [("device", ("auto", "cpu", "cuda")), ("precision", ("auto", "fp32", "bf16"))]:
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    check_device(cfg.device)
    check_out_dir(cfg.out, "--out")
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb needs the wandb package, which is not installed: pip install wandb")


def check_out_dir(path: str, flag: str = "--out") -> None:
    """A folder we can create or write into; else ValueError naming the flag (checked before any training)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} is not writable (no write permission on {parent})")


def finite_float(text: str) -> float:
    """argparse type: a float that is neither nan nor +-inf."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def check_device(device: str) -> None:
    """--device cuda on a machine without a GPU is a usage error, not a crash."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available; use --device cpu or auto")


def field_comments(cls: type) -> dict[str, str]:
    """Map field name -> the comment after it in the class source (used as the flag's help)."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]+=[^#\n]*#\s*(.+)$", source, flags=re.M):
            helps[m.group(1)] = m.group(2).strip()
    return helps


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage dump), exit code 2. No abbreviated flags: `--n-crit`
    for `--n-critic` is an error, so a flag the user typed is never mistaken for one they did not."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(message)


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per dataclass field, defaults taken from the dataclass."""
    parser = OneLineParser(description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = field_comments(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str,
                                                        "bool": bool}.get(str(f.type), str)
        help_text = helps.get(f.name, " ")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=finite_float if kind is float else kind, default=f.default,
                                help=help_text, metavar=f.name.upper())
    return parser


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit with `code` (2, the argparse convention, for usage and data errors)."""
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "train.py"
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def given_fields(cls: type, argv: list[str] | None = None) -> frozenset[str]:
    """The fields whose flags appear in argv (what the user chose, as opposed to the dataclass defaults)."""
    parser = build_parser(cls)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    ns, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return frozenset(vars(ns))


def parse(cls: type[T], argv: list[str] | None = None, check: Callable[[T], None] | None = None,
          description: str | None = None, defaults: Callable[[T, frozenset[str]], T] | None = None) -> T:
    """Parse argv into an instance of the dataclass `cls`; bad values exit with one line, code 2.

    `defaults(cfg, given)` may replace fields the user did not give (`given` = the fields whose flags were on
    the command line), e.g. per-variant defaults; it runs before the checks. `check(cfg)` is the model's own
    validation (raise ValueError); core checks run first for RunConfig.
    """
    ns = build_parser(cls, description).parse_args(argv)
    cfg = cls(**vars(ns))
    if defaults is not None:
        cfg = defaults(cfg, given_fields(cls, argv))
    try:
        if isinstance(cfg, RunConfig):
            check_run_config(cfg)
        if check is not None:
            check(cfg)
    except ValueError as e:
        fail(str(e).splitlines()[0])
    return cfg
