import pytest
import torch

from vitsam.errors import VitsamError
from vitsam.vit.config import ModelConfig, preset
from vitsam.vit.model import ViT, count_parameters


def test_seed_model_has_the_seed_parameter_count():
    model = ViT(preset("seed").model)
    assert count_parameters(model) == 4_249_354  # about 4.25 M
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_fused_attention_equals_plain(pool):
    torch.manual_seed(0)
    model = ViT(ModelConfig(dim=64, depth=2, heads=4, mlp_dim=128, pool=pool)).eval()
    for p in model.head.parameters():  # the head starts at zero: give it weights
        torch.nn.init.normal_(p)
    x = torch.randn(4, 3, 32, 32)
    model.set_attention("sdpa")
    fused = model(x)
    model.set_attention("plain")
    plain = model(x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


def test_shapes_follow_config():
    cfg = ModelConfig(
        image_size=28,
        channels=1,
        patch_size=7,
        dim=48,
        depth=3,
        heads=3,
        mlp_dim=96,
        num_classes=7,
        pool="mean",
        drop_path=0.2,
    )
    model = ViT(cfg)
    assert model.patch_embed.num_patches == 16
    assert model.cls_token is None
    feats = model.forward_features(torch.randn(5, 1, 28, 28))
    assert feats.shape == (5, 16, 48)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 7)
    maps = model.attention_maps(torch.randn(2, 1, 28, 28))
    assert len(maps) == 3 and maps[0].shape == (2, 3, 16, 16)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = ViT(ModelConfig(dim=32, depth=2, heads=2, mlp_dim=64, dropout=0.0, drop_path=0.5))
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_bad_model_configs_are_clear():
    with pytest.raises(VitsamError, match="multiple of patch size"):
        ModelConfig(image_size=30, patch_size=4)
    with pytest.raises(VitsamError, match="divisible by heads"):
        ModelConfig(dim=100, heads=8)


def test_cpu_dropout_keeps_the_right_share_and_scales():
    from vitsam.vit.model import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.1).train()
    x = torch.ones(1000, 1000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # gradient flows through kept elements only
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(1)
    a = Dropout(0.1).train()(torch.ones(64))
    torch.manual_seed(1)
    assert torch.equal(a, Dropout(0.1).train()(torch.ones(64)))  # seeded like torch's dropout


def test_cpu_dropout_draws_fresh_masks_in_any_dtype_and_size():
    from vitsam.vit.model import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.5).train()
    x = torch.ones(3, 7, 11, dtype=torch.bfloat16)  # 231 elements: not a multiple of four
    a, b = drop(x), drop(x)
    assert a.dtype == torch.bfloat16 and a.shape == x.shape
    assert set(a.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(a, b)  # each call its own mask


def test_conv_tokenizer_gives_the_patch_grid_of_tokens():
    cfg = ModelConfig(tokenizer="conv", patch_size=8, dim=64, depth=1, heads=4, mlp_dim=64)
    model = ViT(cfg)
    convs = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]  # widths double up to dim
    tokens = model.patch_embed(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16, 64)  # (32 / 8)^2 tokens, as PatchEmbed gives
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fast_preset_is_the_conv_tokenizer_model_it_documents():
    from torch.utils.flop_counter import FlopCounterMode

    model = ViT(preset("fast").model).eval()
    model.set_attention("plain")  # counts the attention matmuls too
    assert count_parameters(model) == 891_946  # 0.89 M, as the preset's docstring says
    with FlopCounterMode(display=False) as flops:
        model(torch.randn(1, 3, 32, 32))
    assert round(flops.get_total_flops() / 1e6) == 47  # MFLOPs per image, forward


def test_quick_preset_is_the_conv_tokenizer_model_it_documents():
    model = ViT(preset("quick").model)
    assert preset("quick").model.tokenizer == "conv"
    assert count_parameters(model) == 627_242  # as the preset's docstring says


@pytest.mark.parametrize("patch", [1, 6])
def test_conv_tokenizer_needs_a_power_of_two_patch(patch):
    with pytest.raises(VitsamError, match="power of two"):
        ModelConfig(tokenizer="conv", patch_size=patch, image_size=24)


def test_unknown_tokenizer_is_refused():
    with pytest.raises(VitsamError, match="choose patch or conv"):
        ModelConfig(tokenizer="hybrid")
