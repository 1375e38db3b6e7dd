"""The MAE's math: patchify/unpatchify, the random mask, the loss on masked patches only, the encoder's visible-only
input, the 2-D sin-cos embedding, the learning-rate schedule, features of unmasked images."""
import math

import pytest
import torch

import train
from model import (Config, Encoder, MaskedAutoencoder, box_mask, features, mae_loss, mask_of, masked_patch_loss,
                   num_kept, ordering_of, patch_targets, patchify, random_masking, reconstruct, sincos_2d, unpatchify)
from shared import bench

TINY = dict(image_size=16, channels=1, patch_size=4, dim=16, depth=2, heads=2, decoder_dim=8, decoder_depth=1,
            decoder_heads=2)


def tiny(**overrides) -> Config:
    return Config(**{**TINY, **overrides})


@pytest.mark.parametrize("shape,p", [((2, 1, 28, 28), 4), ((3, 3, 32, 32), 4), ((1, 3, 16, 16), 8)])
def test_unpatchify_inverts_patchify_and_patches_are_the_pixel_blocks(shape, p):
    x = torch.randn(*shape)
    patches = patchify(x, p)
    assert patches.shape == (shape[0], (shape[2] // p) ** 2, p * p * shape[1])
    assert torch.equal(unpatchify(patches, p, shape[1]), x)
    assert torch.equal(patchify(unpatchify(patches, p, shape[1]), p), patches)
    # patch 1 (row 0, column 1) holds the pixels x[:, :, 0:p, p:2p], ordered (row, column, channel)
    assert torch.equal(patches[:, 1], x[:, :, :p, p:2 * p].permute(0, 2, 3, 1).flatten(1))


@pytest.mark.parametrize("L,ratio", [(49, 0.75), (64, 0.75), (49, 0.5), (64, 0.9), (16, 0.0)])
def test_the_masked_fraction_equals_the_ratio_and_the_kept_patches_come_first(L, ratio):
    gen = torch.Generator().manual_seed(0)
    ids_shuffle, mask = random_masking(32, L, ratio, generator=gen)
    keep = num_kept(L, ratio)
    assert keep == int(L * (1 - ratio))
    assert torch.equal(mask.sum(1), torch.full((32,), float(L - keep)))  # exactly L - K masked in every image
    if L == 64 and ratio == 0.75:
        assert mask.mean().item() == 0.75  # exact where L (1 - r) is whole
    assert abs(mask.mean().item() - ratio) < 1 / L  # within one patch otherwise
    # ids_shuffle is a permutation per image; its first K entries are exactly the visible patches
    assert torch.equal(ids_shuffle.sort(1).values, torch.arange(L).expand(32, L))
    visible = torch.zeros(32, L).scatter_(1, ids_shuffle[:, :keep], 1.0)
    assert torch.equal(visible, 1 - mask)
    # per-sample masks: images get different masks, and every patch is masked about r of the time
    if 0 < ratio:
        assert not torch.equal(mask[0], mask[1])
        many = random_masking(4000, L, ratio, generator=gen)[1].mean(0)
        assert (many - mask.mean()).abs().max() < 0.05


def test_a_given_mask_is_ordered_with_its_visible_patches_first():
    mask = torch.tensor([[1., 0, 1, 0, 0, 1], [0., 0, 1, 1, 1, 0]])
    ids_shuffle, keep = ordering_of(mask)
    assert keep == 3 and torch.equal(mask_of(ids_shuffle, keep), mask)
    with pytest.raises(ValueError):
        ordering_of(torch.tensor([[1., 0, 0], [1., 1, 0]]))


def test_the_loss_ignores_visible_patches_and_sees_every_masked_one():
    torch.manual_seed(0)
    cfg = tiny()
    pred, target = torch.randn(4, cfg.num_patches, cfg.patch_dim), torch.randn(4, cfg.num_patches, cfg.patch_dim)
    mask = random_masking(4, cfg.num_patches, 0.75, generator=torch.Generator().manual_seed(1))[1]
    loss = masked_patch_loss(pred, target, mask)
    changed = target + 100 * torch.randn_like(target) * (1 - mask)[..., None]  # change only the visible patches
    assert torch.equal(masked_patch_loss(pred, changed, mask), loss)
    # the value is the mean squared error over the masked patches' pixels
    m = mask.bool()
    assert torch.allclose(loss, (pred[m] - target[m]).square().mean())
    # a change in one masked patch changes it
    b, i = m.nonzero()[0]
    poked = target.clone()
    poked[b, i] += 1.0
    assert masked_patch_loss(pred, poked, mask) > loss


def test_changing_the_visible_pixels_of_the_target_image_leaves_the_training_loss_unchanged():
    """End to end: the loss is computed from the same prediction (visible pixels fed in unchanged) and a target
    image that differs only in the visible patches; it equals the loss on the true target."""
    torch.manual_seed(0)
    cfg = tiny()
    model = MaskedAutoencoder(cfg)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    loss, pred, mask = mae_loss(model, cfg, x, generator=torch.Generator().manual_seed(2))
    hidden = unpatchify(mask[..., None].expand(-1, -1, cfg.patch_dim), cfg.patch_size, 1)  # 1 on hidden pixels
    other = x * hidden + torch.rand_like(x) * (1 - hidden)
    assert torch.equal(masked_patch_loss(pred, patch_targets(other, cfg), mask), loss)
    assert not torch.equal(masked_patch_loss(pred, patch_targets(-x, cfg), mask), loss)


def test_norm_pix_targets_have_zero_mean_and_unit_variance_per_patch():
    cfg = tiny(norm_pix_loss=True)
    t = patch_targets(torch.rand(2, 1, 16, 16) * 2 - 1, cfg)
    assert torch.allclose(t.mean(-1), torch.zeros(2, cfg.num_patches), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, cfg.num_patches), atol=1e-3)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_the_encoder_blocks_receive_only_the_visible_tokens(ratio):
    cfg = tiny()
    model = MaskedAutoencoder(cfg)
    seen = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1])) for b in model.encoder.blocks]
    dec_seen = []
    model.decoder.blocks[0].register_forward_hook(lambda mod, inp, out: dec_seen.append(inp[0].shape[1]))
    mae_loss(model, cfg, torch.randn(2, 1, 16, 16), ratio=ratio)
    keep = num_kept(cfg.num_patches, ratio)
    assert seen == [1 + keep] * cfg.depth  # cls + the K visible patches, in every block
    assert dec_seen == [1 + cfg.num_patches]  # the decoder sees every position (mask tokens included)
    for h in hooks:
        h.remove()


def test_the_encoder_costs_the_same_flops_as_an_encoder_of_only_the_visible_patches():
    """At r = 0.75 a 16x16 image keeps K = 4 of its 16 patches: the encoder's counted FLOPs equal those of the same
    encoder on an 8x8 image (4 patches) with nothing masked, and do not depend on which patches are hidden."""
    big, small = Encoder(tiny()), Encoder(tiny(image_size=8))
    patches = patchify(torch.randn(2, 1, 16, 16), 4)
    costs = []
    for seed in range(3):
        ids_shuffle, _ = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(seed))
        costs.append(bench.count_flops(lambda: big(patches, ids_shuffle, 4)))
    full_small = bench.count_flops(lambda: small(patchify(torch.randn(2, 1, 8, 8), 4)))
    full_big = bench.count_flops(lambda: big(patches))
    assert costs == [full_small] * 3
    assert 3.3 < full_big / full_small < 4  # unmasked: 17 tokens instead of 5, about 17/5 the cost


def test_sincos_2d_is_fixed_distinct_per_position_and_zero_for_cls():
    pe = sincos_2d(16, 7)
    assert pe.shape == (50, 16) and torch.equal(pe[0], torch.zeros(16))
    pos = pe[1:]
    assert torch.cdist(pos, pos).add(torch.eye(49) * 10).min() > 0.1  # no two patches share an embedding
    # half the channels depend on the row only, half on the column only
    grid = pos.view(7, 7, 16)
    assert torch.allclose(grid[:, 0, :8], grid[:, 3, :8]) and torch.allclose(grid[0, :, 8:], grid[4, :, 8:])
    assert torch.allclose(pos[0], torch.tensor([0., 0, 0, 0, 1, 1, 1, 1] * 2))  # position (0, 0): sin 0, cos 0
    enc = Encoder(tiny())
    assert "pos_embed" not in enc.state_dict() and not any("pos" in n for n, _ in enc.named_parameters())


def test_reconstruct_pastes_the_visible_patches_and_box_masks_hide_the_overlapping_patches():
    torch.manual_seed(0)
    cfg = tiny()
    model = MaskedAutoencoder(cfg).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    mask = box_mask((5, 0, 8, 4), cfg).expand(2, -1)  # columns 5..7 of rows 0..3: patch (0, 1) only
    assert mask[0].nonzero().flatten().tolist() == [1]
    rec, pasted = reconstruct(model, x, mask)
    assert torch.equal(pasted[..., :, 8:], x[..., :, 8:]) and torch.equal(pasted[..., 4:, :], x[..., 4:, :])
    assert torch.equal(pasted[..., :4, 4:8], rec[..., :4, 4:8])
    assert box_mask((0, 0, 16, 16), cfg).sum() == 16 and box_mask((4, 4, 8, 8), cfg).sum() == 1


@pytest.mark.parametrize("kind,dim", [("mean", 16), ("cls", 16), ("mean+cls", 32), ("blocks", 32), ("tokens", 256)])
def test_features_encode_the_whole_unmasked_image(kind, dim):
    enc = Encoder(tiny())
    seen = []
    enc.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    x = torch.randn(3, 1, 16, 16)
    f = features(enc, x, kind)
    assert f.shape == (3, dim) and seen == [17]
    tokens = enc(patchify(x, 4))
    if kind == "mean":
        assert torch.allclose(f, tokens[:, 1:].mean(1))
    if kind == "tokens":
        assert torch.allclose(f.view(3, 16, 16)[:, 5], tokens[:, 6])  # patch 5 is token 6 (after cls)


def test_learning_rate_warms_up_linearly_then_decays_by_half_cosine():
    cfg = train.TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, decay_steps=110, steps=10 ** 8)
    lrs = [train.learning_rate(s, cfg) for s in range(200)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # warm-up rises
    assert lrs[60] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way through the cosine: the midpoint
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))
    assert lrs[110] == lrs[199] == pytest.approx(1e-5)
    short = train.TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=10, decay_steps=110, steps=60)
    assert train.learning_rate(59, short) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 49 / 50)))


def test_adamw_groups_decay_the_weight_matrices_only():
    model = MaskedAutoencoder(tiny())
    decay, no_decay = train.param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.norm.weight", "encoder.patch_embed.bias"} <= skipped
