"""evaluate.py on a tiny checkpoint: the harness records the flow's bits/dim, samples, reconstructions (exact),
latents as features and, with --ood, the AUROC of bits/dim against another dataset."""
import json
import math

import torch

import evaluate
import train
from model import bits_per_dim, log_prob
from shared import features, metrics


def test_evaluate_writes_a_record_with_the_flows_metrics_and_ood(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(dataset="mnist", image_size=16, batch_size=8, levels=2, depth=1, width=8,
                                       threads=1, precision="fp32", steps=30, minutes=0, lr=3e-3, warmup=5,
                                       init_batch=16, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60, ood="shapes"))
    assert 0.5 < record["bits_per_dim"] < 8 and record["bits_per_dim_se"] > 0
    assert record["mse"] < 1e-8  # f^-1(f(x)) == x: a flow reconstructs exactly
    assert record["max_reconstruction_error"] < 1e-3
    assert record["fid"] > record["fid_floor"] >= 0 and math.isfinite(record["kid"])
    assert 0 <= record["linear_probe"] <= 1 and 0 <= record["knn"] <= 1
    assert record["ood_dataset"] == "shapes" and 0 <= record["ood_auroc"] <= 1
    assert math.isfinite(record["ood_bits_per_dim"]) and record["ood_in_bits_per_dim"] == record["bits_per_dim"]
    assert record["temperature"] == 0.7 and record["flow"] == "glow"
    flow = evaluate.load_model(run, "cpu")[0]
    assert record["params"] == sum(p.numel() for p in flow.parameters())
    for key in ("samples_T0.7_png", "interpolation_png", "reconstruction_png"):
        assert (run / key.replace("_png", ".png")).is_file()
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["bits_per_dim"] == record["bits_per_dim"]


def test_harness_bits_per_dim_is_the_convention_and_is_reproducible(tmp_path):
    run = train.main(train.TrainConfig(image_size=16, batch_size=8, levels=2, depth=1, width=8, threads=1,
                                       precision="fp32", steps=1, minutes=0, init_batch=16, out=str(tmp_path / "r")))
    flow = evaluate.load_model(run, "cpu")[0]
    k = torch.randint(0, 256, (7, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    fn = evaluate.bits_per_dim_fn(flow)
    a, b = fn(k), fn(k)
    assert a.shape == (7,) and torch.equal(a, b)  # one seeded dequantisation
    x = metrics.uniform_dequantize(k, 0.0, 1.0, generator=torch.Generator().manual_seed(evaluate.DEQUANTIZE_SEED))
    with torch.no_grad():
        nll = -log_prob(flow, x)
    for i in range(7):
        assert a[i].item() == __import__("pytest").approx(metrics.dequantized_bits_per_dim(nll[i], 256, 1 / 256),
                                                          rel=1e-6)
    assert torch.allclose(a.float(), bits_per_dim(nll, 256), rtol=1e-5)
