"""The leaderboard driver: each model folder is run as a user would run it, from a clean run folder."""
import json

from shared import leaderboard

TRAIN = """import sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1])
(out / "samples").mkdir(parents=True, exist_ok=True)
(out / "samples" / "step_0000002.png").write_text("grid")
"""
EVALUATE = """import json, sys
from pathlib import Path
run = Path(sys.argv[sys.argv.index("--checkpoint") + 1])
seen = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != "eval.jsonl")
with open(run / "eval.jsonl", "a") as f:
    f.write(json.dumps({"model": "Toy", "dataset": "shapes", "fid": 3.0, "files": seen}) + "\\n")
"""


def test_run_model_trains_in_an_emptied_run_folder_then_reads_the_evaluation(tmp_path, monkeypatch):
    model = tmp_path / "Toy"
    model.mkdir()
    (model / "train.py").write_text(TRAIN)
    (model / "evaluate.py").write_text(EVALUATE)
    stale = model / "runs" / "leaderboard" / "shapes" / "samples" / "step_0099999.png"  # an earlier, longer run
    stale.parent.mkdir(parents=True)
    stale.write_text("old grid")
    monkeypatch.setattr(leaderboard, "ROOT", tmp_path)
    assert leaderboard.participating(["Toy", "Missing"]) == ["Toy"]
    record = leaderboard.run_model("Toy", "shapes", "", minutes=0.1, num=10, threads=1)
    assert record["fid"] == 3.0 and record["minutes"] == 0.1
    assert not stale.exists()  # nothing of the earlier run is left beside the new one
    lines = (model / "runs" / "leaderboard" / "shapes" / "eval.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["files"] == ["samples", "samples/step_0000002.png"]
    # --skip-training re-evaluates the run in place and keeps it
    again = leaderboard.run_model("Toy", "shapes", "", minutes=0.1, num=10, threads=1, train_first=False)
    assert again["fid"] == 3.0 and len((model / "runs" / "leaderboard" / "shapes" / "eval.jsonl")
                                       .read_text().splitlines()) == 2


def test_default_protocol_covers_embedded_mnist_and_shapes_without_a_data_root(tmp_path, monkeypatch):
    calls = []

    def fake_run(model, dataset, data_root, minutes, num, threads, train_first=True):
        calls.append((model, dataset, data_root))
        return {"model": model, "family": "GAN", "dataset": dataset, "fid": 1.0, "fid_floor": 0.5,
                "extractor": f"classifier:{dataset}", "num_samples": num}

    monkeypatch.setattr(leaderboard, "participating", lambda models: ["DCGAN"])
    monkeypatch.setattr(leaderboard, "run_model", fake_run)
    leaderboard.main(["--out", str(tmp_path / "LB.md")])
    assert calls == [("DCGAN", "mnist", ""), ("DCGAN", "shapes", "")]
    text = (tmp_path / "LB.md").read_text()
    assert "| DCGAN | GAN | mnist |" in text and "How the rows were run:" in text


def test_collect_writes_the_table_from_earlier_evaluations_without_running_anything(tmp_path, monkeypatch):
    for dataset, fid in (("mnist", 7.0), ("shapes", 50.0)):
        run = tmp_path / "Toy" / "runs" / "leaderboard" / dataset
        run.mkdir(parents=True)
        (run / "eval.jsonl").write_text(json.dumps({"model": "Toy", "family": "GAN", "dataset": dataset, "fid": 1.0})
                                        + "\n" + json.dumps({"model": "Toy", "family": "GAN", "dataset": dataset,
                                                             "fid": fid, "extractor": "c", "num_samples": 9}) + "\n")
    monkeypatch.setattr(leaderboard, "ROOT", tmp_path)
    monkeypatch.setattr(leaderboard, "participating", lambda models: ["Toy"])
    monkeypatch.setattr(leaderboard, "run_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    leaderboard.main(["--collect", "--out", str(tmp_path / "LB.md")])
    text = (tmp_path / "LB.md").read_text()
    assert "| Toy | GAN | mnist | 7.00 |" in text and "| Toy | GAN | shapes | 50.00 |" in text


def test_rows_name_when_their_run_trained_so_sessions_are_told_apart(tmp_path, monkeypatch):
    import os

    run = tmp_path / "Toy" / "runs" / "leaderboard" / "mnist"
    (run / "checkpoints").mkdir(parents=True)
    (run / "eval.jsonl").write_text(json.dumps({"model": "Toy", "family": "GAN", "dataset": "mnist", "fid": 2.0,
                                                "extractor": "c", "num_samples": 9}) + "\n")
    (run / "checkpoints" / "latest.pt").write_bytes(b"x")
    os.utime(run / "checkpoints" / "latest.pt", (1796083200, 1796083200))  # 2026-12-01 00:00 UTC
    monkeypatch.setattr(leaderboard, "ROOT", tmp_path)
    monkeypatch.setattr(leaderboard, "participating", lambda models: ["Toy"])
    leaderboard.main(["--collect", "--datasets", "mnist", "--out", str(tmp_path / "LB.md")])
    text = (tmp_path / "LB.md").read_text()
    assert "trained (UTC)" in text and "| 2026-12-01 00:00 |" in text
    assert "compare only between rows trained in the same session" in text


def test_a_run_of_stages_is_dated_by_its_newest_stage(tmp_path):
    import os

    for stage, when in (("vqvae", 1796083200), ("prior", 1796083200 + 600)):
        (tmp_path / stage / "checkpoints").mkdir(parents=True)
        (tmp_path / stage / "checkpoints" / "latest.pt").write_bytes(b"x")
        os.utime(tmp_path / stage / "checkpoints" / "latest.pt", (when, when))
    assert leaderboard.trained_at(tmp_path) == "2026-12-01 00:10"
    assert leaderboard.trained_at(tmp_path / "missing") is None


def test_a_partial_run_replaces_its_own_rows_and_keeps_the_others_with_their_cpu(tmp_path, monkeypatch):
    out = tmp_path / "LB.md"
    old = {"model": "DCGAN", "family": "GAN", "dataset": "mnist", "fid": 9.0, "extractor": "c", "num_samples": 5,
           "cpu": "AMD EPYC, avx2", "trained": "2026-11-30 10:00"}
    stale = {**old, "model": "VAE", "family": "VAE", "fid": 50.0}
    out.with_suffix(".json").write_text(json.dumps({"records": {"mnist": [stale, old]}, "notes": ["earlier"]}))
    run = tmp_path / "VAE" / "runs" / "leaderboard" / "mnist"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"cpu": "AMD EPYC | avx2 avx512f avx512_bf16 (no amx_bf16)"}))
    (run / "eval.jsonl").write_text(json.dumps({**stale, "fid": 20.0, "cpu": None}) + "\n")
    monkeypatch.setattr(leaderboard, "ROOT", tmp_path)
    monkeypatch.setattr(leaderboard, "participating", lambda models: ["VAE", "DCGAN"])  # DCGAN's run is not here
    leaderboard.main(["--collect", "--datasets", "mnist", "--out", str(out), "--runs-note", "now"])
    rows = json.loads(out.with_suffix(".json").read_text())["records"]["mnist"]
    assert [(r["model"], r["fid"], r["cpu"]) for r in rows] == [("DCGAN", 9.0, "AMD EPYC, avx2"),
                                                               ("VAE", 20.0, "AMD EPYC, avx512_bf16")]
    text = out.read_text()
    assert "| DCGAN | GAN | mnist | 9.00 |" in text and "| VAE | VAE | mnist | 20.00 |" in text
    assert "- earlier" in text and "now" in text.split("- earlier")[1]  # the notes accumulate, newest last


def test_rows_without_samples_show_their_own_figures_and_stay_off_the_fid_chart(tmp_path, monkeypatch):
    rows = {"mnist": [{"model": "DCGAN", "dataset": "mnist", "fid": 12.0, "fid_floor": 1.0, "extractor": "c",
                       "num_samples": 10},
                      {"model": "MaskedAE", "dataset": "mnist", "linear_probe": 0.9512, "extractor": "c",
                       "num_samples": 10},
                      {"model": "CycleGAN", "dataset": "mnist", "fid": 30.0, "translation_accuracy": 0.875,
                       "extractor": "c", "num_samples": 10}]}
    table = leaderboard.markdown(rows, 10, 10)
    mae = next(line for line in table.splitlines() if line.startswith("| MaskedAE"))
    assert "0.951" in mae and "| - |" in mae  # its probe accuracy, and no FID
    assert "0.875" in next(line for line in table.splitlines() if line.startswith("| CycleGAN"))
    import matplotlib.axes

    seen, original = {}, matplotlib.axes.Axes.bar

    def spy(self, names, heights, **kw):
        seen.update(zip(names, heights))
        return original(self, names, heights, **kw)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    leaderboard.chart(rows, tmp_path / "chart.png")
    assert seen == {"DCGAN": 12.0, "CycleGAN": 30.0} and (tmp_path / "chart.png").is_file()
