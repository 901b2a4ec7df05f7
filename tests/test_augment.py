import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vitsam.vit import augment
from vitsam.vit.config import TrainConfig
from vitsam.vit.data import make_shapes
from vitsam.vit.loaders import DeviceLoader, Normalize


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch():
    return make_shapes(64, seed=3)


def test_crop_flip_is_per_sample_and_keeps_pixels(batch):
    x = batch.images
    out = augment.crop_flip(x, 4, True, gen())
    assert out.shape == x.shape and out.dtype == torch.uint8
    # each output is a shifted (maybe mirrored) window of its own padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(16):
        found = [
            (oy, ox, fl)
            for oy in range(9)
            for ox in range(9)
            for fl in (False, True)
            if torch.equal(
                out[i],
                (lambda w: w.flip(-1) if fl else w)(padded[i, :, oy : oy + 32, ox : ox + 32]),
            )
        ]
        assert found, i
        offsets.append(found[0])
    assert len(set(offsets)) > 5  # per-sample draws
    # no padding, no flip: the identity
    assert torch.equal(augment.crop_flip(x, 0, False, gen()), x)
    # flip only: exactly the original or its mirror, per image, both happen
    f = augment.crop_flip(x, 0, True, gen())
    same = torch.tensor([torch.equal(f[i], x[i]) for i in range(len(x))])
    mirrored = torch.tensor([torch.equal(f[i], x[i].flip(-1)) for i in range(len(x))])
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()


def test_augmentations_are_reproducible_from_the_seed(batch):
    x = batch.images.float() / 255
    a = augment.randaugment(x, 2, 9, gen(5))
    b = augment.randaugment(x, 2, 9, gen(5))
    c = augment.randaugment(x, 2, 9, gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_policies_keep_range_and_draw_per_sample(batch, policy):
    x = batch.images.float() / 255
    x = x[:1].expand(32, -1, -1, -1).contiguous()  # one image 32 times
    g = gen(1)
    out = augment.randaugment(x, 2, 9, g) if policy == "randaugment" else augment.autoaugment(x, g)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    distinct = {tuple(o.flatten()[::97].tolist()) for o in out}
    assert len(distinct) > 8  # not one draw for the whole batch


def test_each_op_changes_images_within_range(batch):
    x = batch.images[:8].float() / 255
    for name, k in augment.OP.items():
        out = augment.apply_ops(x, torch.full((8,), k), torch.full((8,), 0.5))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, name
        if name != "Identity":
            assert not torch.allclose(out, x), name
    ident = augment.apply_ops(x, torch.zeros(8, dtype=torch.long), torch.full((8,), 0.7))
    torch.testing.assert_close(ident, x)


def test_equalize_matches_pil(batch):
    x = batch.images[:6]
    ours = augment.apply_ops(
        x.float() / 255, torch.full((6,), augment.OP["Equalize"]), torch.zeros(6)
    )
    for i in range(6):
        pil = ImageOps.equalize(Image.fromarray(x[i].permute(1, 2, 0).numpy()))
        ref = torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).float() / 255
        assert (ours[i] - ref).abs().max() <= 1 / 255 + 1e-6


def test_cutmix_targets_match_the_pasted_area():
    B, K = 64, 10
    x = torch.zeros(B, 1, 16, 16)
    x += torch.arange(B).view(B, 1, 1, 1)  # image i is filled with the value i
    y = torch.arange(B) % K
    m = augment.mix(x, y, K, 0.0, 1.0, 1.0, 0.0, gen(), np.random.default_rng(0))
    torch.testing.assert_close(m.targets.sum(1), torch.ones(B))
    own = (m.x == x).float().mean((1, 2, 3))  # share of pixels still from the image itself
    torch.testing.assert_close(m.lam, own)
    assert (m.lam < 1).any() and len(set(m.lam.tolist())) > 10  # per-sample boxes
    partner = y.flip(0)
    expect = torch.zeros(B, K)
    expect[torch.arange(B), y] += m.lam
    expect[torch.arange(B), partner] += 1 - m.lam
    torch.testing.assert_close(m.targets, expect)


def test_mixup_blends_with_lambda_and_smoothing_sums_to_one():
    B, K = 32, 10
    x = torch.rand(B, 3, 8, 8)
    y = torch.randint(0, K, (B,))
    m = augment.mix(x, y, K, 0.8, 0.0, 1.0, 0.1, gen(), np.random.default_rng(1))
    lam = m.lam.view(B, 1, 1, 1)
    torch.testing.assert_close(m.x, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(m.targets.sum(1), torch.ones(B))
    assert m.targets.min() >= 0.1 / K - 1e-6
    # mix_prob 0: nothing mixed, smoothed one-hot targets
    m0 = augment.mix(x, y, K, 0.8, 1.0, 0.0, 0.0, gen(), np.random.default_rng(1))
    assert torch.equal(m0.x, x) and torch.equal(m0.targets.argmax(1), y)


def test_random_erasing_boxes_per_sample():
    x = torch.zeros(200, 3, 32, 32)
    out = augment.random_erasing(x, 0.5, gen())
    erased = (out != 0).any(1).float().mean((1, 2))  # share of each image erased
    hit = erased > 0
    assert 0.3 < hit.float().mean() < 0.7
    assert erased[hit].min() >= 0.01 and erased[hit].max() <= 0.34
    assert len(set(erased[hit].tolist())) > 10


def test_device_loader_visits_every_example_once_per_epoch():
    data = make_shapes(300, seed=4)
    data.labels = torch.arange(300)  # make each example identifiable
    cfg = TrainConfig(batch_size=32, crop_padding=0, flip=False)
    norm = Normalize([0.0] * 3, [1.0] * 3, torch.device("cpu"))
    loader = DeviceLoader(data, cfg, norm, torch.device("cpu"), gen(), drop_last=False)
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(300))
    again = torch.cat([y for _, y in loader])
    assert not torch.equal(seen, again)  # a fresh order each epoch
    x, y = next(iter(loader))
    torch.testing.assert_close(x, data.images[y].float() / 255)
