"""experiments/sweep.py: the settings, where each trains, and --collect's table, plot and traversal copy."""
import json

import sweep
import train


def test_the_default_flags_setting_trains_into_the_leaderboard_run_and_the_rest_into_runs_sweep():
    default = sweep.default_setting()
    assert default in sweep.SETTINGS  # train.py's defaults are one of the sweep's settings
    cfg = train.TrainConfig()
    flags = sweep.flags_of(default)
    assert flags["objective"] == cfg.objective and (flags["beta"] == cfg.beta or cfg.objective == "capacity")
    assert str(sweep.run_dir(default)) == "runs/leaderboard/shapes"
    others = [n for n in sweep.SETTINGS if n != default]
    assert [str(sweep.run_dir(n)) for n in others] == [f"runs/sweep/{n}" for n in others]
    train_cmd, eval_cmd = sweep.commands("beta16")
    assert train_cmd[1] == "train.py" and train_cmd[train_cmd.index("--minutes") + 1] == "10"
    assert train_cmd[train_cmd.index("--beta") + 1] == "16" and train_cmd[-1] == "runs/sweep/beta16"
    assert eval_cmd[eval_cmd.index("--checkpoint") + 1] == "runs/sweep/beta16" and "--num" in eval_cmd
    assert {sweep.flags_of(n)["beta"] for n in ("beta1", "beta4", "beta16")} == {1.0, 4.0, 16.0}
    assert sweep.flags_of("capacity")["objective"] == "capacity"


def test_collect_writes_the_table_and_plot_and_copies_the_best_traversal(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "FOLDER", tmp_path)
    figures = {"beta1": (0.05, 0.4), "beta4": (0.20, 0.7), "beta16": (0.10, 0.6)}  # no capacity run yet
    for name, (mig, fvae) in figures.items():
        run = tmp_path / sweep.run_dir(name)
        run.mkdir(parents=True)
        record = {"mig": mig, "factor_vae": fvae, "mse": 0.01 * (1 + mig), "kl": 10.0, "step": 100,
                  "active_dims": 5}
        (run / "eval.jsonl").write_text(json.dumps({**record, "mig": 0.0}) + "\n" + json.dumps(record) + "\n")
        (run / "traversal.png").write_bytes(name.encode())
        (run / "traversal.gif").write_bytes(name.encode())
    rows = sweep.collect(tmp_path / "sweep.md", tmp_path / "assets" / "sweep.png", tmp_path / "assets")
    assert [r["name"] for r in rows] == ["beta1", "beta4", "beta16"]  # the last record of each eval.jsonl
    table = (tmp_path / "sweep.md").read_text()
    assert "| beta 4 |" in table and "0.200 | 4.0x | 0.700" in table and "capacity" not in table
    assert (tmp_path / "assets" / "sweep.png").stat().st_size > 5000
    assert (tmp_path / "assets" / "sweep_best_traversal.png").read_bytes() == b"beta4"  # highest MIG
