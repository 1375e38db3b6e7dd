#!/bin/bash
# The DDPM comparison row of the README: DDPM's own folder, its own commands and default flags, at the same image
# size (32x32 MNIST), on the same machine, one thread, through the session's queue; nothing of DDPM is imported.
#   /work/notes/slot.sh bash experiments/ddpm_baseline.sh      (from inside LatentDiffusion/)
# Writes LatentDiffusion/runs/ddpm_baseline/ (DDPM's run folder: eval.jsonl, fid_vs_steps.md) and the logs beside it.
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/runs/ddpm_baseline
mkdir -p "$out"
cd "$here/../DDPM"
git log -1 --format='DDPM at commit %h (%cd): %s' -- . > "$out.commit"
../.venv/bin/python train.py --dataset mnist --minutes 10 --steps 100000000 --out "$out" --threads 1 --resume "" \
    > "$out.train.log" 2>&1
../.venv/bin/python evaluate.py --checkpoint "$out" --num 2000 --bound-num 0 --threads 1 > "$out.eval.log" 2>&1
../.venv/bin/python evaluate.py --checkpoint "$out" --sweep 10,20 --sweep-num 500 --ancestral-num 0 --threads 1 \
    > "$out.sweep.log" 2>&1
