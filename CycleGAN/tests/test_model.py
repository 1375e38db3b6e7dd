"""The paper's math: cycle and identity losses, the image pool, the lr schedule, LSGAN, the networks' layout."""
import pytest
import torch
from torch import nn

from model import (Config, Generator, ImagePool, PatchDiscriminator, cycle_loss, d_layers_for, identity_loss,
                   lr_factor, lsgan_d_loss, lsgan_g_loss, receptive_field)


class Negate(nn.Module):
    def forward(self, x):
        return -x


def images(n=4, c=3, s=16, seed=0):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- cycle consistency (Eq. 2) and identity loss

def test_cycle_loss_is_zero_for_identity_generators_and_measures_the_round_trip_otherwise():
    a, b = images(seed=1), images(seed=2)
    G_AB, G_BA = nn.Identity(), nn.Identity()
    assert cycle_loss(a, G_BA(G_AB(a)), b, G_AB(G_BA(b))) == 0
    assert identity_loss(a, G_BA(a), b, G_AB(b)) == 0
    # an inverse pair (negate twice) is cycle-consistent although it translates, and is far from the identity
    G_AB, G_BA = Negate(), Negate()
    assert cycle_loss(a, G_BA(G_AB(a)), b, G_AB(G_BA(b))) == 0
    assert torch.isclose(identity_loss(a, G_BA(a), b, G_AB(b)), 2 * a.abs().mean() + 2 * b.abs().mean())
    # a pair that is not inverse: the round trip a -> -a -> -a costs E|-a - a| = 2 E|a| per domain
    G_AB, G_BA = Negate(), nn.Identity()
    assert torch.isclose(cycle_loss(a, G_BA(G_AB(a)), b, G_AB(G_BA(b))), 2 * a.abs().mean() + 2 * b.abs().mean())


def test_cycle_loss_is_l1_summed_over_the_two_directions():
    a, b = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    rec_a, rec_b = torch.full_like(a, 0.5), torch.full_like(b, -0.25)  # L1 0.5 and 0.25; squared would be 0.3125
    assert cycle_loss(a, rec_a, b, rec_b).item() == pytest.approx(0.75)


# ---------------------------------------------------------------- least-squares GAN loss

def test_lsgan_losses_have_their_targets_at_one_for_real_and_zero_for_fake():
    ones, zeros = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    assert lsgan_d_loss(ones, zeros) == 0  # D perfect
    assert lsgan_d_loss(zeros, ones).item() == pytest.approx(1.0)  # 1/2 (1 + 1): the halved D loss
    assert lsgan_d_loss(torch.full_like(ones, 0.5), torch.full_like(ones, 0.5)).item() == pytest.approx(0.25)
    assert lsgan_g_loss(ones) == 0 and lsgan_g_loss(zeros).item() == pytest.approx(1.0)
    assert lsgan_g_loss(torch.full_like(ones, 3.0)).item() == pytest.approx(4.0)  # overshooting 1 costs too


# ---------------------------------------------------------------- the image pool

def constant_images(values, c=1, s=2):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, c, s, s).contiguous()


def test_image_pool_stores_until_full_then_returns_a_stored_image_with_probability_one_half():
    pool = ImagePool(size=50, seed=0)
    first = constant_images(range(50))
    assert torch.equal(pool.query(first), first) and len(pool.images) == 50  # not full yet: fakes pass through
    inside = set(range(50))
    n, old = 4000, 0
    for i in range(50, 50 + n):  # one new fake per query, each with its own value
        out = pool.query(constant_images([i]))[0, 0, 0, 0].item()
        if out != i:  # an old fake came back: it must have been in the pool, and the new one took its place
            assert out in inside
            inside.remove(out)
            inside.add(i)
            old += 1
        assert len(pool.images) == 50 and {int(x[0, 0, 0]) for x in pool.images} == inside
    assert abs(old / n - 0.5) < 0.03  # binomial(4000, 1/2): std 0.008, so this is a ~4-sigma band


def test_image_pool_of_size_zero_passes_fakes_through_and_the_state_round_trips():
    fakes = images(n=3)
    assert torch.equal(ImagePool(size=0).query(fakes), fakes)
    a, b = ImagePool(size=4, seed=7), ImagePool(size=4, seed=7)
    for i in range(3):
        a.query(images(n=3, seed=i)), b.query(images(n=3, seed=i))
    c = ImagePool(size=4, seed=123)
    c.load_state_dict(a.state_dict())
    for i in range(3, 8):
        out_a, out_c = a.query(images(n=3, seed=i)), c.query(images(n=3, seed=i))
        assert torch.equal(out_a, out_c)
    assert torch.equal(torch.stack(a.images), torch.stack(c.images))


def test_the_pool_output_does_not_carry_the_generators_graph():
    fakes = images(n=2).requires_grad_()
    assert not ImagePool(size=1).query(fakes * 2).requires_grad


# ---------------------------------------------------------------- learning-rate schedule

def test_lr_factor_is_constant_then_linear_to_zero():
    assert all(lr_factor(p) == 1.0 for p in (0.0, 0.1, 0.3, 0.5))
    later = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    values = [lr_factor(p) for p in later]
    assert values == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])  # equal steps: linear, ending at exactly 0
    assert lr_factor(1.5) == 0.0  # never negative past the end
    assert lr_factor(0.25, decay_start=0.0) == pytest.approx(0.75)  # decay from the start: 1 - progress


# ---------------------------------------------------------------- networks

def test_generator_is_c7s1_d_d_resblocks_u_u_c7s1_with_reflection_padding_and_instance_norm():
    cfg = Config(image_size=32, channels=3, g_width=8, n_blocks=2)
    G = Generator(cfg)
    convs = [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
             for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs == [("Conv2d", 3, 8, 7, 1), ("Conv2d", 8, 16, 3, 2), ("Conv2d", 16, 32, 3, 2),
                     *[("Conv2d", 32, 32, 3, 1)] * 4,
                     ("ConvTranspose2d", 32, 16, 3, 2), ("ConvTranspose2d", 16, 8, 3, 2), ("Conv2d", 8, 3, 7, 1)]
    pads = [m.padding[0] for m in G.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert pads == [3, 1, 1, 1, 1, 3]  # every size-keeping conv is reflection-padded
    norms = [m for m in G.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 9 and not any(m.affine for m in norms)  # all but the output layer, no affine
    x = images(n=2, s=32)
    y = G(x)
    assert y.shape == x.shape and y.abs().max() <= 1


def test_residual_blocks_add_their_input():
    G = Generator(Config(image_size=16, channels=1, g_width=4, n_blocks=1))
    block = G.body[3]
    for p in block.parameters():
        nn.init.zeros_(p)  # the residual branch outputs IN(0) = 0
    x = torch.randn(2, 16, 4, 4)
    assert torch.allclose(block(x), x)


def test_paper_networks_have_the_official_parameter_counts():
    """The official code prints 11.378 M for the 9-block 256x256 generator and 2.765 M for the 70x70 PatchGAN."""
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert round(count(Generator(Config(image_size=256, n_blocks=9))) / 1e6, 3) == 11.378
    assert round(count(PatchDiscriminator(Config(image_size=256, d_layers=3))) / 1e6, 3) == 2.765


def empirical_receptive_field(d_layers: int, size: int) -> int:
    """Width of the input region that one central PatchGAN output depends on (InstanceNorm removed: its
    statistics couple every pixel, the convolutions' receptive field is what the paper's 70x70 means)."""
    D = PatchDiscriminator(Config(image_size=size, channels=1, d_width=4, d_layers=d_layers))
    for name, m in list(D.body.named_children()):
        if isinstance(m, nn.InstanceNorm2d):
            D.body[int(name)] = nn.Identity()
    x = torch.randn(1, 1, size, size, requires_grad=True)
    out = D(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    cols = (x.grad[0, 0].abs().sum(0) > 0).nonzero()
    return int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("d_layers,expected", [(1, 16), (2, 34), (3, 70)])
def test_patchgan_receptive_field_is_70_px_with_three_layers(d_layers, expected):
    assert receptive_field(d_layers) == expected
    assert empirical_receptive_field(d_layers, size=160) == expected


def test_patchgan_depth_scales_with_the_image_size_and_outputs_a_score_map():
    assert [d_layers_for(s) for s in (16, 32, 64, 128, 256)] == [1, 1, 2, 3, 3]
    D = PatchDiscriminator(Config(image_size=32, channels=3, d_width=8, d_layers=d_layers_for(32)))
    assert D(images(n=2, s=32)).shape == (2, 1, 14, 14)  # 16 px patches, one score each


@pytest.mark.parametrize("kwargs", [dict(image_size=30), dict(image_size=8), dict(g_width=0), dict(n_blocks=-1),
                                    dict(image_size=16, d_layers=4)])
def test_config_refuses_impossible_sizes(kwargs):
    with pytest.raises(ValueError):
        Config(**kwargs)
