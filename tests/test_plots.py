"""scoresde/plots.py: the image grid, with one row per class when labels are given."""

import pytest
import torch

from scoresde.plots import image_grid, samples_figure, save_samples_png


def _images(labels, H=3, W=2):
    # every pixel of image i holds (i + 1) / 100, so a grid cell tells which image sits there
    n = len(labels)
    return (torch.arange(n, dtype=torch.float32)[:, None, None, None] + 1) / 100 * torch.ones(n, 1, H, W)


def _cell(grid, r, c, H=3, W=2):
    return grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W]


def test_labelled_grid_has_one_row_per_class_in_order_of_first_request():
    labels = torch.tensor([7, 3, 7, 7, 3, 5])
    x = _images(labels)
    grid, rows, cols = image_grid(x, labels, per_row=2)
    assert (rows, cols) == (3, 2) and grid.shape == (1, 3 * 4 + 1, 2 * 3 + 1)
    # row 0: class 7's first two images (0, 2); row 1: class 3's (1, 4); row 2: class 5's (5), then blank
    for r, idx in enumerate([[0, 2], [1, 4], [5]]):
        for c, i in enumerate(idx):
            assert torch.all(_cell(grid, r, c) == (i + 1) / 100), (r, c)
    assert torch.all(_cell(grid, 2, 1) == 1.0)


def test_unlabelled_grid_is_near_square_and_capped_at_64():
    x = _images(list(range(70)))
    grid, rows, cols = image_grid(x)
    assert (rows, cols) == (8, 8)
    assert torch.all(_cell(grid, 7, 7) == 64 / 100)   # image 63 last, images 64.. left out
    grid, rows, cols = image_grid(x[:5])
    assert (rows, cols) == (2, 3)


def test_save_samples_png_takes_labels_for_images_and_vectors(tmp_path):
    labels = torch.tensor([0, 1, 1])
    assert save_samples_png(_images(labels), tmp_path / "a.png", labels=labels).stat().st_size > 0
    assert save_samples_png(torch.randn(3, 2), tmp_path / "b.png", labels=labels).stat().st_size > 0
    with pytest.raises(ValueError, match="2 labels for 3 samples"):
        save_samples_png(torch.randn(3, 2), tmp_path / "c.png", labels=labels[:2])


def test_a_scatter_fits_its_axes_to_the_data_not_to_far_off_samples_and_counts_those():
    import scoresde as sd
    mix = sd.ring8()
    g = torch.Generator().manual_seed(0)
    data = mix.sample(500, generator=g)
    x = torch.cat([mix.sample(1990, generator=g), torch.full((10, 2), 1e3)])     # 10 diverged samples
    fig = samples_figure(x, data, title="ring8")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    # the ring (radius 4 plus its modes' spread) fills the panel: not squeezed into a corner by 1e3
    assert -7 < lo < float(data[:, 0].min()) and float(data[:, 0].max()) < hi < 7
    assert ax.get_title() == "ring8\n10 of 2000 samples outside the axes"
    # a shifted bulk stays in view: limits take the samples' central 98% too
    lo, hi = samples_figure(data + 10.0, data).axes[0].get_xlim()
    assert lo < float(data[:, 0].min()) and hi > float(data[:, 0].max()) + 10.0
