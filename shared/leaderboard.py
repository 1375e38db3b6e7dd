"""Train every model folder with the same CPU budget on the same data, evaluate each the same way, and write
LEADERBOARD.md (one table) plus LEADERBOARD.png (a chart).

    nox -s leaderboard                                   # MNIST (embedded) and shapes, 10 minutes per model
    nox -s leaderboard -- --datasets mnist               # MNIST only
    nox -s leaderboard -- --data-root DIR                # MNIST from torchvision's files under DIR (e.g. all 60,000)
    python -m shared.leaderboard --models DCGAN --minutes 2 --num 1000

A model folder takes part as soon as it has train.py and evaluate.py: each is run as a user would run it,
`python train.py --minutes M --steps <large> --out runs/leaderboard/<dataset>` then
`python evaluate.py --checkpoint runs/leaderboard/<dataset> --num N`, from inside the folder.

The rows live in LEADERBOARD.json beside the table, so they outlive the run folders (which are not committed): a
run of some models, or `--collect` in a checkout that holds only some runs, replaces those models' rows and keeps
every other row as it was, with the CPU and the time it was trained.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FOLDERS = ["DCGAN", "WGAN", "BiGAN", "ConditionalGAN", "CycleGAN", "StyleGAN", "VAE", "BetaVAE", "VQ-VAE",
                 "MaskedAE", "DDPM", "ScoreBased", "ConditionalDiffusion", "LatentDiffusion", "FlowModels"]
COLUMNS = [("model", "model", "{}"), ("family", "family", "{}"), ("dataset", "dataset", "{}"), ("fid", "FID", "{:.2f}"),
           ("fid_floor", "FID floor", "{:.2f}"), ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
           ("bits_per_dim", "bits/dim", "{:.3f}"), ("mse", "recon. MSE", "{:.4f}"),
           ("linear_probe", "probe acc.", "{:.3f}"), ("translation_accuracy", "transl. acc.", "{:.3f}"),
           ("train_images_per_s", "train img/s", "{:.0f}"), ("sample_images_per_s", "sample img/s", "{:.0f}"),
           ("trained", "trained (UTC)", "{}"), ("cpu", "CPU", "{}")]


def participating(models: list[str] | None) -> list[str]:
    """Model folders that exist and have both train.py and evaluate.py."""
    names = models or MODEL_FOLDERS
    return [m for m in names if (ROOT / m / "train.py").is_file() and (ROOT / m / "evaluate.py").is_file()]


def run_model(model: str, dataset: str, data_root: str, minutes: float, num: int, threads: int,
              train_first: bool = True) -> dict | None:
    """Train then evaluate one model; the evaluation record, or None if a step failed (reported). Training starts
    from an empty run folder, so no sample grid or checkpoint of an earlier leaderboard run is left beside it."""
    folder, out = ROOT / model, f"runs/leaderboard/{dataset}"
    if train_first:
        shutil.rmtree(folder / out, ignore_errors=True)
    data_flags = ["--dataset", dataset] + (["--data-root", data_root] if data_root and dataset == "mnist" else [])
    train = [sys.executable, "train.py", *data_flags, "--minutes", str(minutes), "--steps", "100000000",
             "--out", out, "--threads", str(threads), "--resume", ""]
    evaluate = [sys.executable, "evaluate.py", "--checkpoint", out, "--num", str(num), "--threads", str(threads)]
    for cmd in (train, evaluate) if train_first else (evaluate,):
        print(f"[{model}] {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=folder).returncode != 0:
            print(f"[{model}] failed: {' '.join(cmd[1:])}", file=sys.stderr)
            return None
    lines = (folder / out / "eval.jsonl").read_text().splitlines()
    return {**json.loads(lines[-1]), "minutes": minutes, "trained": trained_at(folder / out),
            "cpu": trained_on(folder / out)}


def trained_at(run: Path) -> str | None:
    """When the run's last checkpoint was written (UTC), so rows of different sessions are told apart; a run of
    several stages (VQ-VAE's vqvae/ and prior/) counts its newest stage."""
    latest = [p.stat().st_mtime for p in run.glob("**/checkpoints/latest.pt")]
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(max(latest))) if latest else None


def trained_on(run: Path) -> str | None:
    """The CPU a run trained on, short ('AMD EPYC, avx512_bf16'), from its newest config.json (shared.training
    records it); None for runs older than that record."""
    configs = sorted(run.glob("**/config.json"), key=lambda p: p.stat().st_mtime)
    cpu = json.loads(configs[-1].read_text()).get("cpu") if configs else None
    if not cpu:
        return None
    model, _, flags = cpu.partition(" | ")
    have = flags.split(" (")[0].split()
    best = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in have), "")
    return f"{model}, {best}" if best else model


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """The rows of one dataset: the new ones, and the old rows of every model that has no new row; in the order
    of MODEL_FOLDERS (models not listed there last)."""
    fresh = {r["model"] for r in new}
    rows = new + [r for r in old if r["model"] not in fresh]
    order = {m: i for i, m in enumerate(MODEL_FOLDERS)}
    return sorted(rows, key=lambda r: order.get(r["model"], len(order)))


def load_board(path: Path) -> dict:
    """LEADERBOARD.json: {"records": {dataset: [row, ...]}, "notes": [how earlier rows were run, ...]}."""
    return json.loads(path.read_text()) if path.is_file() else {"records": {}, "notes": []}


def collect(model: str, dataset: str, minutes: float) -> dict | None:
    """The newest evaluation record of an earlier leaderboard run (runs/leaderboard/<dataset>), or None."""
    path = ROOT / model / "runs" / "leaderboard" / dataset / "eval.jsonl"
    if not path.is_file():
        print(f"[{model}] no evaluation at {path}", file=sys.stderr)
        return None
    return {**json.loads(path.read_text().splitlines()[-1]), "minutes": minutes, "trained": trained_at(path.parent),
            "cpu": trained_on(path.parent)}


def markdown(records: dict[str, list[dict]], minutes: float, num: int, notes: list[str] | None = None) -> str:
    """LEADERBOARD.md: one table (a row per model and dataset), the protocol stated above it."""
    text = ["# Leaderboard", "",
            f"Every model trained for **{minutes:g} minutes** of wall-clock on a 2-core CPU (the row's `CPU`) with its default "
            f"flags, then evaluated by `evaluate.py --num {num}` (shared/evaluation.py). FID, precision and "
            "recall use the dataset's own classifier features (listed below the table); the floor is the FID "
            "between two disjoint real sets of the same size. Speeds (img/s) compare only between rows trained in "
            "the same session (the `trained` column: sessions differ in CPU and in what else ran). Written by "
            "`nox -s leaderboard` from LEADERBOARD.json, which keeps the rows of models not re-run; do not edit.",
            "", *(["How the rows were run:", *[f"- {n}" for n in notes], ""] if notes else []),
            "| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    rows = [r for dataset_rows in records.values() for r in dataset_rows]
    for r in rows:
        text.append("| " + " | ".join(fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in COLUMNS) + " |")
    extractors = sorted({f"{r['dataset']}: {r['extractor']}" for r in rows})
    text += ["", f"Features: {'; '.join(extractors)}. Samples per model: {rows[0]['num_samples']}.", "",
             "![FID by model](LEADERBOARD.png)", ""]
    return "\n".join(text)


def chart(records: dict[str, list[dict]], path: Path) -> None:
    """Bar chart of FID per model (with the real-vs-real floor as a line), one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(5 * len(records), 3.5), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], records.items()):
        rows = [r for r in rows if r.get("fid") is not None]  # flows / MAE rows have no samples scored by FID
        names = [r["model"] for r in rows]
        ax.bar(names, [r["fid"] for r in rows], color="tab:blue")
        floor = rows[0].get("fid_floor") if rows else None
        if floor is not None:
            ax.axhline(floor, color="black", linestyle="--", linewidth=1, label="real-vs-real floor")
            ax.legend()
        ax.set_title(f"{dataset}: FID (lower is better)")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per model and dataset")
    p.add_argument("--num", type=int, default=2000, help="samples per model for the metrics")
    p.add_argument("--datasets", nargs="+", default=["mnist", "shapes"], choices=["mnist", "shapes"],
                   help="datasets to train and evaluate on (mnist = the embedded copy unless --data-root)")
    p.add_argument("--data-root", default="", help="read MNIST from torchvision's files under this folder instead")
    p.add_argument("--models", nargs="*", help="subset of model folders (default: all that exist)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    p.add_argument("--skip-training", action="store_true",
                   help="re-evaluate the runs a previous leaderboard trained (e.g. after a metric change)")
    p.add_argument("--collect", action="store_true",
                   help="neither train nor evaluate: write the table from the runs' newest evaluations (e.g. after "
                        "running the datasets as separate processes, one thread each)")
    p.add_argument("--runs-note", default="", help="how the runs shared the machine, for the table's header "
                   "(default: 'one run at a time')")
    p.add_argument("--out", default=str(ROOT / "LEADERBOARD.md"))
    args = p.parse_args(argv)
    datasets = args.datasets
    data_root = str(Path(args.data_root).resolve()) if args.data_root else ""
    from shared.bench import cpu_line

    out = Path(args.out)
    board = load_board(out.with_suffix(".json"))
    records, notes = board["records"], board["notes"]
    note = f"{time.strftime('%Y-%m-%d', time.gmtime())}: {cpu_line(args.threads)}, " + \
        (args.runs_note or "one run at a time")
    wrote = False
    for dataset in datasets:  # the table is rewritten after each dataset: a cut-short run keeps what it measured
        rows = [collect(m, dataset, args.minutes) if args.collect else
                run_model(m, dataset, data_root, args.minutes, args.num, args.threads, not args.skip_training)
                for m in participating(args.models)]
        if any(r is not None for r in rows):
            records[dataset] = merged(records.get(dataset, []), [r for r in rows if r is not None])
            notes = [n for n in notes if n != note] + [note]
            out.with_suffix(".json").write_text(json.dumps({"records": records, "notes": notes}, indent=1) + "\n")
            out.write_text(markdown(records, args.minutes, args.num, notes))
            chart(records, out.with_suffix(".png"))
            print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.png')} ({', '.join(records)})",
                  flush=True)
            wrote = True
    if not wrote:
        sys.exit("no model finished; nothing to write")


if __name__ == "__main__":
    main()
