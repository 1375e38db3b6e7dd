"""ConditionalGAN networks and objective: shapes, the projection and AC-GAN math, conditioning, sampling."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import (Config, ConditionalBatchNorm2d, Discriminator, Generator, class_grid, class_loss,
                   discriminator_loss, ema_update, generator_loss, hinge_discriminator_loss, hinge_generator_loss,
                   non_saturating_generator_loss, sample, sample_any_class, source_loss)


def tiny(conditioning="projection", **kw) -> Config:
    return Config(**{**dict(image_size=16, channels=3, num_classes=4, z_dim=8, g_width=8, d_width=8,
                            conditioning=conditioning), **kw})


def randomise_class_embeddings(G: Generator) -> None:
    """Conditional BatchNorm starts as the identity for every class; give each class its own gain and bias."""
    for m in G.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            nn.init.normal_(m.gamma.weight, 1.0, 0.3)
            nn.init.normal_(m.beta.weight, 0.0, 0.3)


@pytest.mark.parametrize("conditioning", ["projection", "acgan"])
@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 3)])
def test_shapes_and_range(conditioning, size, channels):
    torch.manual_seed(0)
    cfg = Config(image_size=size, channels=channels, num_classes=3, z_dim=16, g_width=8, d_width=8,
                 conditioning=conditioning)
    G, D = Generator(cfg), Discriminator(cfg)
    y = torch.tensor([0, 1, 2, 1, 0])
    z = torch.randn(5, 16)
    x = G(z, y)
    assert x.shape == (5, channels, size, size) and torch.isfinite(x).all() and x.std() > 0
    with torch.no_grad():  # an output layer 1000x too strong: only a final tanh keeps the images in [-1, 1]
        G.to_image.weight.mul_(1000)
        saturated = G(z, y)
    assert saturated.abs().max() <= 1.0 and saturated.abs().max() > 0.99
    logit, class_logits = D(x, y)
    assert logit.shape == (5,)
    assert (class_logits is None) == (conditioning == "projection")
    if class_logits is not None:
        assert class_logits.shape == (5, 3)


@pytest.mark.parametrize("kwargs,needle", [(dict(image_size=24), "power of two"), (dict(image_size=8), "power of two"),
                                           (dict(conditioning="concat"), "--conditioning"),
                                           (dict(num_classes=1), "at least 2 classes")])
def test_config_rejects_what_it_cannot_build(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Config(**kwargs)


def test_projection_logit_changes_with_the_label_by_exactly_the_embedding_inner_product():
    """Miyato & Koyama Eq. 3: f(x, y) = psi(phi(x)) + v_y^T phi(x), so f(x, y) - f(x, y') = <v_y - v_y', phi(x)>."""
    torch.manual_seed(0)
    D = Discriminator(tiny()).eval()  # eval: spectral norm reuses its power-iteration vectors, weights stay fixed
    x = torch.randn(6, 3, 16, 16)
    y, y_other = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 2, 1, 0, 2, 3])
    with torch.no_grad():
        phi, V = D.phi(x), D.embed.weight  # (6, F), (K, F) -- V as D uses it (spectrally normalised)
        f, f_other = D(x, y)[0], D(x, y_other)[0]
        expected = ((V[y] - V[y_other]) * phi).sum(1)
        assert torch.allclose(f - f_other, expected, atol=1e-5)
        assert not torch.allclose(f, f_other, atol=1e-4)  # the label matters
        # and what is left is the unconditional term psi(phi(x)), the same for every label
        assert torch.allclose(f - (V[y] * phi).sum(1), D.psi(phi).squeeze(1), atol=1e-5)
        assert torch.allclose(f_other - (V[y_other] * phi).sum(1), D.psi(phi).squeeze(1), atol=1e-5)


def test_spectral_norm_makes_every_discriminator_weight_1_lipschitz():
    torch.manual_seed(0)
    D = Discriminator(tiny())
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        for _ in range(200):  # each training-mode forward runs one power iteration
            D(x, y)
    weights = [m.weight for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(weights) == 4  # 2 convs, psi and V at 16x16
    for w in weights:
        sigma = torch.linalg.matrix_norm(w.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=2e-2)
    plain = Discriminator(tiny(spectral_norm=False))
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())


def test_acgan_loss_decomposes_into_source_and_class_terms():
    """Odena et al.: D maximises L_S + L_C (Eq. 2 + Eq. 3), G maximises L_C - L_S (non-saturating source term)."""
    torch.manual_seed(0)
    real, fake = (torch.randn(8) * 2, torch.randn(8, 5)), (torch.randn(8) * 2, torch.randn(8, 5))
    y = torch.randint(5, (8,))
    L_S = torch.log(torch.sigmoid(real[0])).mean() + torch.log(1 - torch.sigmoid(fake[0])).mean()  # Eq. 2
    L_C = (torch.log_softmax(real[1], 1)[torch.arange(8), y].mean()
           + torch.log_softmax(fake[1], 1)[torch.arange(8), y].mean())  # Eq. 3
    loss_d, terms = discriminator_loss(real, fake, y, loss="bce", class_weight=1.0)
    assert torch.allclose(loss_d, -(L_S + L_C), atol=1e-5)
    assert terms["loss_d_adv"] == pytest.approx(-L_S.item(), abs=1e-5)
    assert terms["loss_d_class"] == pytest.approx(-L_C.item(), abs=1e-5)
    assert torch.allclose(source_loss(*[o[0] for o in (real, fake)]), -L_S, atol=1e-5)
    # the class weight scales the class term only
    loss_d2, _ = discriminator_loss(real, fake, y, loss="bce", class_weight=2.5)
    assert torch.allclose(loss_d2, -L_S - 2.5 * L_C, atol=1e-5)
    loss_g, terms_g = generator_loss(fake, y, loss="bce", class_weight=1.0)
    expected_g = -torch.log(torch.sigmoid(fake[0])).mean() + F.cross_entropy(fake[1], y)
    assert torch.allclose(loss_g, expected_g, atol=1e-5)
    assert terms_g["loss_g_class"] == pytest.approx(class_loss(fake[1], y).item(), abs=1e-6)


def test_projection_losses_have_no_class_term():
    real, fake, y = (torch.randn(8), None), (torch.randn(8), None), torch.zeros(8, dtype=torch.long)
    loss_d, terms = discriminator_loss(real, fake, y, loss="hinge")
    assert torch.allclose(loss_d, hinge_discriminator_loss(real[0], fake[0])) and set(terms) == {"loss_d_adv"}
    loss_g, terms = generator_loss(fake, y, loss="bce")
    assert torch.allclose(loss_g, non_saturating_generator_loss(fake[0])) and set(terms) == {"loss_g_adv"}


def test_hinge_loss_values_margins_and_gradient_signs():
    # zero once real logits are >= 1 and fake logits <= -1: D stops pushing past the margin
    assert hinge_discriminator_loss(torch.tensor([1.0, 5.0]), torch.tensor([-1.0, -3.0])).item() == 0.0
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2.0)
    assert hinge_discriminator_loss(torch.tensor([0.5]), torch.tensor([0.25])).item() == pytest.approx(0.5 + 1.25)
    fake = torch.tensor([-3.0, 0.0, 3.0], requires_grad=True)
    hinge_generator_loss(fake).backward()
    assert torch.allclose(fake.grad, torch.full((3,), -1 / 3))  # G raises D(G(z, y), y) everywhere, no saturation


def test_bce_source_loss_is_binary_cross_entropy_and_stable():
    torch.manual_seed(0)
    real, fake = torch.randn(64) * 3, torch.randn(64) * 3
    expected = (F.binary_cross_entropy(torch.sigmoid(real), torch.ones(64))
                + F.binary_cross_entropy(torch.sigmoid(fake), torch.zeros(64)))
    assert torch.allclose(source_loss(real, fake), expected, atol=1e-5)
    assert source_loss(torch.zeros(8), torch.zeros(8)).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    assert source_loss(torch.full((4,), -200.0), torch.full((4,), 200.0)).item() == pytest.approx(400, rel=1e-4)


def test_generator_output_depends_on_each_samples_own_label():
    torch.manual_seed(0)
    G = Generator(tiny())
    randomise_class_embeddings(G)
    G.eval()  # fixed BatchNorm statistics: each image depends only on its own (z, y)
    z = torch.randn(4, 8)
    per_class = [G(z, torch.full((4,), k)) for k in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert (per_class[a] - per_class[b]).abs().max() > 1e-3, (a, b)
    mixed = G(z, torch.tensor([2, 0, 3, 1]))
    for i, k in enumerate([2, 0, 3, 1]):
        assert torch.allclose(mixed[i], per_class[k][i], atol=1e-6)  # image i used label i


def test_a_generator_step_updates_only_the_class_parameters_of_the_labels_it_saw():
    torch.manual_seed(0)
    cfg = tiny()
    G, D = Generator(cfg), Discriminator(cfg)
    y = torch.tensor([1, 1, 3, 3])
    loss, _ = generator_loss(D(G(torch.randn(4, 8), y), y), y)
    loss.backward()
    for m in G.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            for table in (m.gamma, m.beta):
                assert table.weight.grad[[0, 2]].abs().max() == 0  # classes 0 and 2 were not in the batch
                assert table.weight.grad[[1, 3]].abs().max() > 0


@pytest.mark.parametrize("conditioning,loss", [("projection", "hinge"), ("acgan", "bce"), ("projection", "bce")])
def test_one_step_of_each_player_moves_the_game_the_right_way(conditioning, loss):
    torch.manual_seed(0)
    cfg = tiny(conditioning, channels=1)
    G, D = Generator(cfg), Discriminator(cfg)
    real, y, z = torch.rand(32, 1, 16, 16) * 2 - 1, torch.randint(4, (32,)), torch.randn(32, 8)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    d_loss = lambda: discriminator_loss(D(real, y), D(G(z, y).detach(), y), y, loss=loss)[0]
    before = d_loss().item()
    for _ in range(3):
        opt_d.zero_grad(); d_loss().backward(); opt_d.step()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters())
    D.eval()  # freeze spectral norm's power iteration: G must improve against this D
    assert d_loss().item() < before
    g_loss = lambda: generator_loss(D(G(z, y), y), y, loss=loss)[0]
    g_before = g_loss().item()
    for _ in range(3):
        opt_g.zero_grad(); g_loss().backward(); opt_g.step()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters())
    assert g_loss().item() < g_before


def test_class_grid_puts_one_class_per_row_and_shares_z_down_each_column():
    torch.manual_seed(0)
    G = Generator(tiny())
    randomise_class_embeddings(G)
    G.eval()
    z = torch.randn(5, 8)
    classes = [3, 0, 2]
    images = class_grid(G, classes, columns=5, z=z)
    assert images.shape == (15, 3, 16, 16)
    for row, k in enumerate(classes):
        expected = sample(G, torch.full((5,), k), z=z)  # row `row` is class k with the column's z
        assert torch.allclose(images[row * 5:(row + 1) * 5], expected, atol=1e-6)


def test_sampling_is_deterministic_and_batch_independent_in_eval():
    torch.manual_seed(0)
    G = Generator(tiny()).eval()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    a = sample(G, labels, rng=torch.Generator().manual_seed(1))
    b = sample(G, labels, rng=torch.Generator().manual_seed(1), batch_size=4)
    assert torch.allclose(a, b, atol=1e-6)
    c = sample_any_class(G, 7, rng=torch.Generator().manual_seed(2))
    assert c.shape == (7, 3, 16, 16)


def test_ema_update_is_the_exponential_moving_average_with_its_warm_up():
    """theta_ema <- beta theta_ema + (1 - beta) theta, beta = min(decay, (1 + t) / (10 + t)); buffers copied."""
    torch.manual_seed(0)
    G, ema = Generator(tiny()), Generator(tiny())
    before = [p.clone() for p in ema.parameters()]
    G.train()(torch.randn(4, 8), torch.arange(4))  # moves BatchNorm's running statistics
    assert ema_update(ema, G, decay=0.999, step=0) == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)
    for p0, p, pe in zip(before, G.parameters(), ema.parameters()):
        torch.testing.assert_close(pe, 0.1 * p0 + 0.9 * p)
    for b, be in zip(G.buffers(), ema.buffers()):
        assert torch.equal(b, be)
    assert ema_update(ema, G, decay=0.999, step=10 ** 6) == 0.999  # after the warm-up, the decay itself
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    mid = [p.clone() for p in ema.parameters()]
    ema_update(ema, G, decay=0.5, step=10 ** 6)
    for p0, p, pe in zip(mid, G.parameters(), ema.parameters()):
        torch.testing.assert_close(pe, 0.5 * p0 + 0.5 * p)
