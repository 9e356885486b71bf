import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.training.augment import (
    DSA_OPERATIONS,
    DSAConfig,
    apply_dsa,
    black,
    combined,
    crop_flip,
    dsa,
    dsa_per_image,
    make_augmenter,
    sample_dsa,
    shift_images,
)


def images(n: int = 6, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op", DSA_OPERATIONS)
def test_every_dsa_operation_passes_gradients_to_the_input(op) -> None:
    x = images().requires_grad_(True)
    out = dsa(x, DSAConfig(strategy=op), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_all_operations_in_sequence_are_differentiable() -> None:
    x = images().requires_grad_(True)
    dsa(x, DSAConfig(single=False), torch.Generator().manual_seed(2)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_draw_replays_the_same_transform() -> None:
    x = images()
    draw = sample_dsa(DSAConfig(single=False), len(x), (16, 16), torch.Generator().manual_seed(3))
    assert torch.equal(apply_dsa(x, draw), apply_dsa(x.clone(), draw))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(dsa(x, DSAConfig(), g1), dsa(x, DSAConfig(), g2))


def test_single_mode_applies_exactly_one_operation() -> None:
    gen = torch.Generator().manual_seed(0)
    seen = {sample_dsa(DSAConfig(), 4, (8, 8), gen).operations for _ in range(200)}
    assert seen == {(op,) for op in DSA_OPERATIONS}


def test_flip_is_per_sample() -> None:
    x = images(n=32)
    draw = sample_dsa(DSAConfig(strategy="flip"), 32, (16, 16), torch.Generator().manual_seed(5))
    out = apply_dsa(x, draw)
    flipped = draw.params["flip"]
    assert 0 < int(flipped.sum()) < 32
    assert torch.equal(out[flipped], x[flipped].flip(3))
    assert torch.equal(out[~flipped], x[~flipped])


def test_shift_moves_content_and_fills_with_zeros() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = shift_images(x, torch.tensor([1]), torch.tensor([-1]), (1, 1))
    assert torch.equal(out[0, 0, :3, 1:], x[0, 0, 1:, :3])
    assert out[0, 0, 3].abs().sum() == 0 and out[0, 0, :, 0].abs().sum() == 0


def test_crop_flip_only_moves_and_zeroes_pixels() -> None:
    x = images(n=16) + 10.0  # no zeros in the input, so padding is recognisable
    out = crop_flip(x, torch.Generator().manual_seed(6))
    values = set(x.flatten().tolist())
    assert set(out.flatten().tolist()) <= values | {0.0}


def test_combined_applies_dsa_exactly_where_the_mask_says() -> None:
    x = images(n=10) + 10.0
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool)
    config = DSAConfig(strategy="color")  # changes every pixel value, unlike crop+flip
    out = combined(x, mask, config, torch.Generator().manual_seed(7))
    # Same generator stream, replayed piece by piece: DSA on the masked rows, then crop+flip.
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(out[mask], dsa_per_image(x[mask], config, gen))
    assert torch.equal(out[~mask], crop_flip(x[~mask], gen))
    # And independently of the implementation: only unmasked rows keep the input's values.
    for row in range(10):
        kept = set(out[row].flatten().tolist()) <= set(x[row].flatten().tolist()) | {0.0}
        assert kept != bool(mask[row])


def test_combined_draws_the_dsa_operation_per_image_as_the_authors_do() -> None:
    # color moves every pixel off the input's values; cutout keeps all but a zeroed patch
    x = images(n=40) + 10.0
    out = combined(
        x,
        torch.ones(40, dtype=torch.bool),
        DSAConfig(strategy="color_cutout"),
        torch.Generator().manual_seed(3),
    )
    kept = [
        set(out[r].flatten().tolist()) <= set(x[r].flatten().tolist()) | {0.0} for r in range(40)
    ]
    assert any(kept) and not all(kept)  # both operations in one batch (one op per batch: 2^-39)


def test_crop_flip_pads_with_the_given_fill() -> None:
    x = torch.full((8, 2, 6, 6), 5.0)
    fill = torch.tensor([-1.0, -2.0])
    out = crop_flip(x, torch.Generator().manual_seed(1), pad=2, fill=fill)
    for channel, value in enumerate(fill.tolist()):
        assert set(out[:, channel].flatten().tolist()) == {5.0, value}


def test_black_is_the_normalised_value_of_a_zero_pixel() -> None:
    mean, std = torch.tensor([0.5, 0.25]), torch.tensor([0.5, 0.5])

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    assert torch.allclose(black(normalize, 2), torch.tensor([-1.0, -0.5]))


def test_combined_keeps_gradients_for_the_dsa_part() -> None:
    x = images(n=4).requires_grad_(True)
    mask = torch.tensor([True, False, True, False])
    combined(
        x, mask, DSAConfig(strategy="scale"), torch.Generator().manual_seed(8)
    ).sum().backward()
    assert x.grad is not None
    assert (x.grad[mask].abs().sum(dim=(1, 2, 3)) > 0).all()


def test_augmenter_by_name() -> None:
    x = images()
    assert torch.equal(make_augmenter("none")(x, None, torch.Generator()), x)
    out = make_augmenter("combined")(x, None, torch.Generator().manual_seed(0))
    assert torch.equal(out, crop_flip(x, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("strategy", ["", "color_blur", "crop__zoom"])
def test_bad_strategy_is_a_clear_error(strategy) -> None:
    with pytest.raises(ConfigError, match="--dsa-strategy"):
        DSAConfig(strategy=strategy)
