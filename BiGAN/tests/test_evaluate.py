"""evaluate.py on a tiny checkpoint: the harness records sample, reconstruction and representation metrics, and the
untrained-encoder baseline beside them."""
import json

import torch

import evaluate
import train
from model import Config, Encoder
from shared import checkpoint, features


def test_evaluate_writes_a_record_with_encoder_metrics_and_the_random_init_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(image_size=16, batch_size=8, z_dim=8, g_width=8, e_width=8, d_width=8,
                                       d_joint=16, threads=1, precision="fp32", steps=2, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    for key in ("fid", "fid_floor", "precision", "recall", "mse", "psnr", "mse_random_sample", "linear_probe", "knn",
                "linear_probe_random_init", "knn_random_init", "mig", "factor_vae", "train_images_per_s", "params"):
        assert record[key] is not None, key
    assert record["fid"] > record["fid_floor"]
    assert 0 <= record["linear_probe_random_init"] <= 1 and 0 <= record["knn_random_init"] <= 1
    assert "bits_per_dim" not in record
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1]) == json.loads(json.dumps(record))


def test_random_init_baseline_is_the_encoder_train_py_started_from(tmp_path):
    """train.build(seed) reproduces the initial E exactly, so the baseline differs from the trained E by training only."""
    cfg = train.TrainConfig(image_size=16, batch_size=8, z_dim=8, g_width=8, e_width=8, d_width=8, d_joint=16,
                            threads=1, precision="fp32", steps=1, seed=3, out=str(tmp_path / "run"))
    run = train.main(cfg)
    state = checkpoint.load(run, "BiGAN")
    _, E0, _ = train.build(Config(**state["model_config"]), seed=3)
    _, E0_again, _ = train.build(Config(**state["model_config"]), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(E0.state_dict().values(), E0_again.state_dict().values()))
    trained = Encoder(Config(**state["model_config"]))
    trained.load_state_dict(state["E"])
    # one Adam step moved every weight by about lr: the baseline is the pre-training point, not the trained one
    delta = (trained.to_code.weight - E0.to_code.weight).abs()
    assert 0 < delta.max() < 10 * cfg.lr
