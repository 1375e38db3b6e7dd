"""Run pytorch/examples' VAE (the anchor of issue 19) on this machine and score it with our harness.

    python experiments/anchor.py run --repo /work/.mirror/pytorch+examples/repo --minutes 10   # train the anchor
    python experiments/anchor.py score                                                         # FID + IWAE NLL

`run` takes vae/main.py from a git clone (or bare mirror) of https://github.com/pytorch/examples, unmodified but
for a wall-clock stop (checked after each of its epochs) and a final `torch.save(model.state_dict())`, and
runs it with one thread on the same 5,000 training / 10,000 test MNIST images this project embeds (decompressed
into the torchvision layout it reads from ../data). Nothing of its code is copied into this project: the file
is read from the clone at run time into runs/anchor/pytorch_examples/.

`score` loads its weights into its own VAE class (imported from that file) and measures, at its native 28x28:
  * sample FID etc. through shared.evaluation.evaluate, exactly as our evaluate.py does (decoder means of
    z ~ N(0, I), 28x28, scored against the 28x28 embedded MNIST);
  * the ELBO and the IWAE NLL (nats) of the same binarised held-out images our evaluate.py scores, with the
    same estimator (model.iwae_nll), its decoder read as a Bernoulli likelihood.
Its numbers are appended to runs/anchor/pytorch_examples/eval.jsonl.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FOLDER = HERE.parent
WORK = FOLDER / "runs" / "anchor" / "pytorch_examples"
EMBEDDED = FOLDER.parent / "shared" / "mnist"
LOOP = '''if __name__ == "__main__":
    for epoch in range(1, args.epochs + 1):'''
STOP = '''if __name__ == "__main__":
    import time as _anchor_time  # added by VAE/experiments/anchor.py: the wall-clock stop
    _anchor_deadline = _anchor_time.time() + {seconds}
    for epoch in range(1, args.epochs + 1):
        if _anchor_time.time() > _anchor_deadline:
            print(f"anchor.py: wall-clock stop after {{epoch - 1}} epochs")
            break'''
SAVE = '''
    torch.save(model.state_dict(), "vae_state.pt")  # added by VAE/experiments/anchor.py
'''


def read_main(repo: Path) -> str:
    """vae/main.py from a work tree or a bare mirror of pytorch/examples."""
    if (repo / "vae" / "main.py").is_file():
        return (repo / "vae" / "main.py").read_text()
    return subprocess.run(["git", "--git-dir", str(repo), "show", "HEAD:vae/main.py"], capture_output=True,
                          text=True, check=True).stdout


def commit_of(repo: Path) -> str:
    git = ["git", "-C", str(repo)] if (repo / ".git").exists() else ["git", "--git-dir", str(repo)]
    return subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def prepare(repo: Path, minutes: float) -> Path:
    """runs/anchor/pytorch_examples/{vae/main.py (patched), data/MNIST/raw/*}; returns the vae/ folder."""
    source = read_main(repo)
    if source.count(LOOP) != 1:
        raise SystemExit("vae/main.py changed upstream: its epoch loop is not where anchor.py expects it")
    patched = source.replace(LOOP, STOP.format(seconds=minutes * 60)) + SAVE
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "vae" / "results").mkdir(parents=True)
    (WORK / "vae" / "main.py").write_text(patched)
    raw = WORK / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in EMBEDDED.glob("*-ubyte.gz"):  # torchvision checks for the decompressed names and then skips download
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    (WORK / "SOURCE").write_text(f"pytorch/examples {commit_of(repo)} vae/main.py, wall-clock stop {minutes} min\n")
    return WORK / "vae"


def run(repo: Path, minutes: float) -> None:
    folder = prepare(repo, minutes)
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(WORK / "train.log", "w") as log:
        rc = subprocess.run([sys.executable, "main.py", "--epochs", "1000000", "--no-accel"], cwd=folder,
                            stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    print(f"anchor trained for {(time.time() - start) / 60:.1f} min (rc {rc}); log: {WORK / 'train.log'}")


def load_anchor():
    """The anchor's VAE class (imported from the patched main.py; its argparse sees no flags) with its weights."""
    import torch

    folder = WORK / "vae"
    argv, cwd = sys.argv, Path.cwd()
    sys.argv = ["main.py", "--no-accel"]
    try:
        os.chdir(folder)  # its module level reads ../data
        spec = importlib.util.spec_from_file_location("anchor_main", folder / "main.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    vae = module.VAE()
    vae.load_state_dict(torch.load(folder / "vae_state.pt", weights_only=True))
    return vae.eval()


def score(num: int, nll_num: int, iwae_k: int, seed: int = 0) -> dict:
    """The anchor through shared.evaluation.evaluate at 28x28, with our evaluate.py's likelihood figures."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(FOLDER))
    from evaluate import BINARISE_SEED, active_units
    from model import bernoulli_log_prob, elbo, iwae_nll, kl_divergence, observe
    from shared import evaluation

    vae = load_anchor()
    flat = lambda x: ((x + 1) / 2).reshape(len(x), 784)  # its input: intensities in [0, 1], flattened
    logits = lambda z: vae.fc4(F.relu(vae.fc3(z)))  # its decode() is sigmoid(fc4(relu(fc3(z))))
    image = lambda p: (2 * p - 1).view(-1, 1, 28, 28)  # decoder means as images in [-1, 1]

    @torch.no_grad()
    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        return image(vae.decode(torch.randn(n, 20, generator=gen)))

    @torch.no_grad()
    def likelihood(record: dict, ref, held) -> dict:
        """As evaluate.likelihood_record: the first nll_num held-out images binarised with BINARISE_SEED."""
        data_gen, noise_gen = torch.Generator().manual_seed(BINARISE_SEED), torch.Generator().manual_seed(seed)
        nelbo, iwae, mus, start = [], [], [], time.perf_counter()
        for chunk in held.images[:nll_num].split(100):
            x_in, x = observe(chunk, "bernoulli", generator=data_gen)  # x in {0, 1}; the encoder sees x too
            mu, logvar = vae.encode(flat(x_in))

            def log_p(z: torch.Tensor) -> torch.Tensor:  # z (k, B, 20) -> log p(x|z) (k, B)
                n, b = z.shape[:2]
                x_rep = x.unsqueeze(0).expand(n, *x.shape).reshape(n * b, 1, 28, 28)
                return bernoulli_log_prob(logits(z.reshape(n * b, 20)).view(n * b, 1, 28, 28), x_rep).view(n, b)

            nelbo.append(-elbo(mu, logvar, log_p, generator=noise_gen))
            iwae.append(iwae_nll(x, mu, logvar, log_p, k=iwae_k, generator=noise_gen).float())
            mus.append(mu)
        nelbo, iwae, d = torch.cat(nelbo), torch.cat(iwae), 28 * 28
        return {"likelihood": "bernoulli (its BCE decoder)", "nll_num": len(iwae), "iwae_k": iwae_k,
                "iwae_seconds": time.perf_counter() - start, "nelbo_nats": nelbo.mean().item(),
                "iwae_nll_nats": iwae.mean().item(), "num_active_units": len(active_units(torch.cat(mus))),
                "nelbo_bits_per_binary_pixel": nelbo.double().mean().item() / (d * math.log(2)),
                "iwae_nll_bits_per_binary_pixel": iwae.double().mean().item() / (d * math.log(2)),
                "source": (WORK / "SOURCE").read_text().strip()}

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return image(vae.decode(vae.encode(flat(x))[0]))

    caps = evaluation.Capabilities(sample=sample, reconstruct=reconstruct,
                                   encode=torch.no_grad()(lambda x: vae.encode(flat(x))[0]))
    return evaluation.evaluate("pytorch/examples VAE", "VAE", caps, dataset="mnist", data_root=None, image_size=28,
                               num=num, seed=seed, run_dir=WORK, params=sum(p.numel() for p in vae.parameters()),
                               extra=likelihood)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--repo", type=Path, required=True, help="a clone or bare mirror of pytorch/examples")
    r.add_argument("--minutes", type=float, default=10.0)
    s = sub.add_parser("score")
    s.add_argument("--num", type=int, default=2000, help="samples and real images (as evaluate.py --num)")
    s.add_argument("--nll-num", type=int, default=1000, help="held-out images for the ELBO and IWAE (as evaluate.py)")
    s.add_argument("--iwae-k", type=int, default=100, help="importance samples (as evaluate.py --iwae-k)")
    args = parser.parse_args()
    if args.command == "run":
        run(args.repo, args.minutes)
    else:
        score(args.num, args.nll_num, args.iwae_k)


if __name__ == "__main__":
    main()
