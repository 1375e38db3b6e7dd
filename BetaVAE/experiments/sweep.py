"""The disentanglement sweep of the README: beta 1, 4, 16 and one capacity schedule on shapes, each at the
default budget (10 minutes, 1 thread), each evaluated with the shared harness (MIG, FactorVAE score,
reconstruction MSE) and the folder's KL.

    python experiments/sweep.py --only beta1        # train + evaluate one setting (run it through slot.sh)
    python experiments/sweep.py --only capacity
    python experiments/sweep.py --collect           # experiments/sweep.md (table) + assets/sweep.png (plot)

The setting whose flags are train.py's defaults trains into runs/leaderboard/shapes (it doubles as the
leaderboard's shapes row); the others into runs/sweep/<name>. --collect reads each run's eval.jsonl (last
record), writes the table and the plot, and copies the best setting's (highest MIG) traversal.png / .gif to
assets/. Run from the BetaVAE folder or anywhere: paths are relative to the folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, list[str]] = {
    "beta1": ["--objective", "beta", "--beta", "1"],  # the plain VAE: the baseline of the MIG target
    "beta4": ["--objective", "beta", "--beta", "4"],
    "beta16": ["--objective", "beta", "--beta", "16"],
    "capacity": ["--objective", "capacity", "--gamma", "100", "--capacity-max", "15", "--capacity-steps", "2500"],
}
BUDGET = ["--dataset", "shapes", "--minutes", "10", "--steps", "100000000", "--threads", "1", "--resume", ""]


def flags_of(name: str) -> dict[str, object]:
    """The TrainConfig fields a setting sets, parsed by train.py's own parser."""
    sys.path.insert(0, str(FOLDER))
    import train
    from shared import cli

    cfg = cli.parse(train.TrainConfig, SETTINGS[name] + ["--out", "runs/x"])
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def default_setting() -> str | None:
    """The setting that train.py runs with no flags (same objective and objective flags as the defaults)."""
    sys.path.insert(0, str(FOLDER))
    import train

    defaults = dataclasses.asdict(train.TrainConfig())
    for name in SETTINGS:
        flags = flags_of(name)
        keys = ("objective", "beta") if flags["objective"] == "beta" else (
            "objective", "gamma", "capacity_max", "capacity_steps")
        if all(flags[k] == defaults[k] for k in keys):
            return name
    return None


def run_dir(name: str) -> Path:
    return Path("runs/leaderboard/shapes") if name == default_setting() else Path("runs/sweep") / name


def commands(name: str, minutes: float = 10.0, num: int = 2000) -> list[list[str]]:
    """train.py then evaluate.py for one setting, both from the folder, one thread."""
    budget = list(BUDGET)
    budget[budget.index("--minutes") + 1] = f"{minutes:g}"
    out = str(run_dir(name))
    return [[sys.executable, "train.py", *budget, *SETTINGS[name], "--out", out],
            [sys.executable, "evaluate.py", "--checkpoint", out, "--num", str(num), "--threads", "1"]]


def last_record(run: Path) -> dict | None:
    path = FOLDER / run / "eval.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def label(name: str) -> str:
    flags = SETTINGS[name]
    if "capacity" in flags:
        g, c, n = (flags[flags.index(f) + 1] for f in ("--gamma", "--capacity-max", "--capacity-steps"))
        return f"capacity (gamma {g}, C 0->{c} nats over {n} steps)"
    return f"beta {flags[flags.index('--beta') + 1]}"


def collect(out_md: Path, out_png: Path, assets: Path) -> list[dict]:
    """The table (markdown) and the plot from the runs' eval.jsonl; copies the best traversals to assets/."""
    rows = []
    for name in SETTINGS:
        record = last_record(run_dir(name))
        if record is not None:
            rows.append({"name": name, "label": label(name), "run": str(run_dir(name)), **record})
    if not rows:
        raise SystemExit("no evaluated sweep runs yet: run --only NAME first")
    baseline = next((r["mig"] for r in rows if r["name"] == "beta1"), None)
    lines = ["| setting | run | steps | MIG | MIG / beta=1 | FactorVAE | recon MSE | KL (nats) | active dims |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['mig'] / baseline:.1f}x" if baseline else "-"
        lines.append(f"| {r['label']} | `{r['run']}` | {r.get('step', '?')} | {r['mig']:.3f} | {ratio} | "
                     f"{r['factor_vae']:.3f} | {r['mse']:.4f} | {r['kl']:.1f} | {r.get('active_dims', '?')} |")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines) + "\n")
    plot(rows, out_png)
    best = max(rows, key=lambda r: r["mig"])
    assets.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "gif"):
        src = FOLDER / best["run"] / f"traversal.{ext}"
        if src.is_file():
            shutil.copyfile(src, assets / f"sweep_best_traversal.{ext}")
    print("\n".join(lines))
    print(f"best setting by MIG: {best['label']} ({best['run']}); wrote {out_md}, {out_png}")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Reconstruction error (x) against MIG and the FactorVAE score (y), one labelled point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "mig", "MIG"), (axes[1], "factor_vae", "FactorVAE score")):
        for r in rows:
            ax.scatter(r["mse"], r[key], s=40, color="tab:red" if r["name"] == "capacity" else "tab:blue")
            ax.annotate(r["name"], (r["mse"], r[key]), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xlabel("reconstruction MSE (held-out, [-1, 1] scale)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    fig.suptitle("BetaVAE on shapes, 10 minutes each: disentanglement vs reconstruction")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--only", choices=list(SETTINGS), help="train and evaluate this setting")
    p.add_argument("--collect", action="store_true", help="table + plot from the runs' eval.jsonl")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per setting")
    p.add_argument("--num", type=int, default=2000, help="evaluate.py --num")
    args = p.parse_args(argv)
    if not args.only and not args.collect:
        p.error("give --only NAME or --collect")
    if args.only:
        for cmd in commands(args.only, args.minutes, args.num):
            print(" ".join(cmd), flush=True)
            rc = subprocess.run(cmd, cwd=FOLDER).returncode
            if rc != 0:
                raise SystemExit(rc)
    if args.collect:
        collect(FOLDER / "experiments" / "sweep.md", FOLDER / "assets" / "sweep.png", FOLDER / "assets")


if __name__ == "__main__":
    main()
