"""Export the small weights a model folder ships in pretrained/, from one of its training runs.

    python -m shared.pretrained DCGAN/runs/leaderboard/mnist --model DCGAN --keys G --out DCGAN/pretrained/generator.pt
    python -m shared.pretrained ConditionalGAN/runs/x --model ConditionalGAN --keys G_ema:G --out ...  # EMA as G

Writes float16 tensors (checkpoint.save_pretrained) with the run's model config and a `source` line naming
the run, its step, its dataset and the git commit; `sample.py --pretrained` loads the file with weights_only.
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from shared import checkpoint


def git_commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export(run: str, model: str, keys: list[str], out: str) -> Path:
    """keys: 'G' or 'G_ema:G' (checkpoint entry : name in the pretrained file)."""
    state = checkpoint.load(run, model)
    weights = {}
    for spec in keys:
        src, _, dst = spec.partition(":")
        if not isinstance(state.get(src), dict):
            raise checkpoint.CheckpointError(f"{run} has no weights {src!r}")
        weights[dst or src] = state[src]
    cfg = state["config"]
    source = (f"{model} run {run}: step {state['step']}, --dataset {cfg.get('dataset')}, --minutes "
              f"{cfg.get('minutes')}, {state.get('world_size', 1)} process(es), commit {git_commit(Path(run))}")
    plain = {k: state[k] for k in ("classes",) if k in state}  # e.g. class names for a conditional sampler
    return checkpoint.save_pretrained(out, model, state["model_config"], weights, source, extra=plain)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--model", required=True)
    p.add_argument("--keys", nargs="+", required=True, help="entries to keep, 'src' or 'src:dst'")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    path = export(args.run, args.model, args.keys, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
