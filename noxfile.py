"""Test sessions: `nox` runs them all, `nox -s DCGAN` one folder.

All sessions share ONE environment (`env`, created once and reused) so torch is installed once.
Each folder's tests run in their own pytest process from inside the folder, so the identically
named `model.py` files of different models never meet in one interpreter.
"""
from pathlib import Path

import nox

ROOT = Path(__file__).parent
MODEL_FOLDERS = [
    "DCGAN", "WGAN", "BiGAN", "ConditionalGAN", "CycleGAN", "StyleGAN",
    "VAE", "BetaVAE", "VQ-VAE", "MaskedAE",
    "DDPM", "ScoreBased", "ConditionalDiffusion", "LatentDiffusion", "FlowModels",
]
FOLDERS = ["shared"] + [f for f in MODEL_FOLDERS if (ROOT / f / "model.py").exists()]

nox.options.sessions = ["env"] + FOLDERS
nox.options.reuse_existing_virtualenvs = True


@nox.session(reuse_venv=True)
def env(session: nox.Session) -> None:
    """The one environment every other session uses: the project (shared + dependencies), editable, with the
    test-only dependencies (the `test` extra)."""
    session.install("-e", ".[test]")


def env_python() -> str:
    """Python of the `env` session's virtualenv."""
    bindir = "Scripts" if (ROOT / ".nox" / "env" / "Scripts").exists() else "bin"
    return str(ROOT / ".nox" / "env" / bindir / "python")


def make_folder_session(folder: str) -> None:
    """Register `nox -s <folder>`: that folder's tests, in their own process, from inside the folder."""

    @nox.session(name=folder, venv_backend="none", requires=["env"])
    def _run(session: nox.Session) -> None:
        session.chdir(ROOT / folder)
        session.run(env_python(), "-m", "pytest", "tests", *session.posargs, external=True,
                    env={"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})


for _folder in FOLDERS:
    make_folder_session(_folder)


@nox.session(venv_backend="none", requires=["env"])
def leaderboard(session: nox.Session) -> None:
    """Train + evaluate every model folder on the same data and budget; writes LEADERBOARD.md/.png.

    Not part of the default `nox` run (it takes ~10 minutes per model). Options after `--`, e.g.
    `nox -s leaderboard -- --minutes 5 --data-root ../shared/datasets` (see shared/leaderboard.py).
    """
    session.run(env_python(), "-m", "shared.leaderboard", *session.posargs, external=True)
