"""The image U-Net: shapes, padding, conditioning and the null label, config validation."""

import pytest
import torch

from confdiff.nn.unet import UNet, UNetConfig, sinusoidal_embedding


def _randomise(model: UNet) -> UNet:
    """Zero-initialised output layers make a fresh U-Net output 0; give every weight a value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize(
    "cfg",
    [
        UNetConfig(resolution=8, channels=16, num_classes=10),
        UNetConfig(resolution=28, channels=16, channel_mult=(1, 2, 2), attention_resolutions=(7,)),
        UNetConfig(resolution=28, channels=16, channel_mult=(1, 2, 2, 2), attention_resolutions=(8,)),
        UNetConfig(in_channels=3, resolution=16, channels=16, channel_mult=(1, 2, 2), attention_resolutions=()),
    ],
)
def test_output_shape_matches_input(cfg):
    model = UNet(cfg)
    x = torch.randn(3, cfg.in_channels, cfg.resolution, cfg.resolution)
    out = model(x, torch.rand(3))
    assert out.shape == x.shape
    assert cfg.padded_resolution % 2 ** (len(cfg.channel_mult) - 1) == 0


def test_fresh_model_outputs_zero():
    """The output convolution is zero-initialised (a stable start for eps prediction)."""
    model = UNet(UNetConfig(channels=16, num_classes=3))
    assert torch.all(model(torch.randn(2, 1, 8, 8), torch.rand(2)) == 0)


def test_labels_change_the_output_and_none_is_the_null_label():
    cfg = UNetConfig(channels=16, num_classes=10, dropout=0.0)
    model = _randomise(UNet(cfg))
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    a = model(x, t, torch.tensor([0, 1, 2, 3]))
    b = model(x, t, torch.tensor([4, 5, 6, 7]))
    assert not torch.allclose(a, b)
    null = model(x, t, torch.full((4,), cfg.null_label))
    torch.testing.assert_close(model(x, t, None), null)


def test_noise_level_changes_the_output_and_samples_are_independent():
    model = _randomise(UNet(UNetConfig(channels=16, dropout=0.0)))
    x = torch.randn(4, 1, 8, 8)
    a = model(x, torch.zeros(4))
    b = model(x, torch.full((4,), 5.0))
    assert not torch.allclose(a, b)
    # sample i does not depend on the rest of the batch (GroupNorm, not BatchNorm)
    torch.testing.assert_close(model(x[:1], torch.zeros(1)), a[:1], rtol=1e-5, atol=1e-5)


def test_unconditional_model_rejects_labels():
    with pytest.raises(ValueError, match="unconditional"):
        UNet(UNetConfig(channels=16))(torch.randn(1, 1, 8, 8), torch.rand(1), torch.tensor([0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"channels": 12, "num_groups": 8}, "num_groups"), ({"dropout": 1.0}, "dropout"),
     ({"channel_mult": ()}, "channel_mult"), ({"num_classes": -1}, "num_classes")],
)
def test_config_validation_names_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_sinusoidal_embedding():
    e = sinusoidal_embedding(torch.tensor([0.0, 1.0]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    torch.testing.assert_close(e.pow(2).reshape(2, 2, 4).sum(1), torch.ones(2, 4))


def test_from_checkpoint_restores_ema_weights(tmp_path):
    cfg = UNetConfig(channels=16, num_classes=2)
    model = _randomise(UNet(cfg))
    path = tmp_path / "m.pt"
    from dataclasses import asdict

    torch.save({"model_config": {"unet": asdict(cfg)}, "ema": model.state_dict(), "model": None}, path)
    restored = UNet.from_checkpoint(path).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    torch.testing.assert_close(restored(x, t), model(x, t))
