"""Tests for lit_caps.data.corruptions on real MNIST test images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lit_caps.data import corruptions as C

N_IMAGES = 20


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    root = os.environ.get("LIT_CAPS_DATA", "../shared/data")
    raw = Path(root) / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    if not raw.exists():
        pytest.skip(f"MNIST test set not found at {raw} (set LIT_CAPS_DATA to the folder holding MNIST/raw)")
    torchvision = pytest.importorskip("torchvision")
    ds = torchvision.datasets.MNIST(root=root, train=False, download=False)
    return ds.data[:N_IMAGES].numpy()


@pytest.fixture(scope="module")
def corrupted(images):
    """seed-0 corruption of the test images, computed once per corruption."""
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = C.corrupt_images(images, name, seed=0)
        return cache[name]

    return get


def _tv(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.abs(np.diff(x, axis=0)).sum() + np.abs(np.diff(x, axis=1)).sum())


# --------------------------------------------------------------------------- names / API


def test_name_lists():
    assert len(C.PAPER_CORRUPTIONS) == 17 and len(set(C.PAPER_CORRUPTIONS)) == 17
    assert len(C.PUBLIC_CORRUPTIONS) == 15 and len(set(C.PUBLIC_CORRUPTIONS)) == 15
    assert C.PAPER_CORRUPTIONS[0] == "gaussian_noise" and C.PAPER_CORRUPTIONS[-1] == "zigzag"
    assert C.ALL_CORRUPTIONS[0] == "identity"
    assert len(C.ALL_CORRUPTIONS) == len(set(C.ALL_CORRUPTIONS))
    assert set(C.ALL_CORRUPTIONS) == {"identity"} | set(C.PAPER_CORRUPTIONS) | set(C.PUBLIC_CORRUPTIONS)
    assert C.DETERMINISTIC_CORRUPTIONS <= set(C.ALL_CORRUPTIONS)
    for alias, target in C.ALIASES.items():
        assert target in C.ALL_CORRUPTIONS, alias


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="gaussian_noise"):
        C.get_corruption("no_such_corruption")
    with pytest.raises(ValueError):
        C.corrupt_images(np.zeros((1, 28, 28), np.uint8), "no_such_corruption")


def test_alias_matches_canonical(images):
    a = C.corrupt_images(images[:3], "jpeg_compression", seed=3)
    b = C.corrupt_images(images[:3], "jpeg", seed=3)
    np.testing.assert_array_equal(a, b)


def test_get_corruption_float_api(images):
    x = images[0].astype(np.float64) / 255.0
    for name in ("gaussian_noise", "fog", "frost"):
        y = C.get_corruption(name)(x, np.random.default_rng(0))
        assert y.shape == (28, 28) and np.issubdtype(y.dtype, np.floating)
        assert y.min() >= 0.0 and y.max() <= 1.0


# --------------------------------------------------------------------------- generic, every corruption


@pytest.mark.parametrize("name", C.ALL_CORRUPTIONS)
def test_generic_properties(name, images, corrupted):
    out = corrupted(name)
    assert out.shape == images.shape
    assert out.dtype == np.uint8  # so values are within [0, 255]

    # deterministic for a fixed seed
    np.testing.assert_array_equal(out, C.corrupt_images(images, name, seed=0))

    # a different seed changes at least one image for the random corruptions
    other = C.corrupt_images(images, name, seed=1)
    if C.is_random(name):
        assert not np.array_equal(out, other)
    else:
        np.testing.assert_array_equal(out, other)

    # per-image seeding: a slice with start_index equals the rows of the full call
    part = C.corrupt_images(images[5:10], name, seed=0, start_index=5)
    np.testing.assert_array_equal(part, out[5:10])

    # every corruption except identity changes every image
    changed = (out.astype(int) != images.astype(int)).any(axis=(1, 2))
    if name == "identity":
        np.testing.assert_array_equal(out, images)
    else:
        assert changed.all(), f"{name} left images {np.flatnonzero(~changed)} unchanged"


# --------------------------------------------------------------------------- definitions


def test_inverse(images, corrupted):
    np.testing.assert_array_equal(corrupted("inverse"), 255 - images)


def test_quantize_binary(images, corrupted):
    out = corrupted("quantize")
    assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out, np.where(images >= 128, 255, 0))


def test_contrast_reduces_std(images, corrupted):
    out = corrupted("contrast").astype(np.float64)
    x = images.astype(np.float64)
    ratio = out.std(axis=(1, 2)) / x.std(axis=(1, 2))
    assert np.all((ratio > 0.08) & (ratio < 0.12)), ratio
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=0.5)


def test_gaussian_blur_reduces_total_variation(images, corrupted):
    out = corrupted("gaussian_blur")
    for a, b in zip(images, out):
        assert _tv(b) < 0.6 * _tv(a)
    # isotropic: blurs across columns as well as rows
    x = np.zeros((1, 28, 28), np.uint8)
    x[0, 14, 14] = 255
    y = C.corrupt_images(x, "gaussian_blur")[0].astype(int)
    np.testing.assert_array_equal(y, y.T)


def test_canny_edges_binary(corrupted):
    out = corrupted("canny_edges")
    assert set(np.unique(out)) <= {0, 255}
    assert (out == 255).any(axis=(1, 2)).all()
    # thin edges: far fewer lit pixels than the digit's area
    assert ((out == 255).mean(axis=(1, 2)) < 0.35).all()


def test_stripe_inverts_exact_columns(images, corrupted):
    out = corrupted("stripe")
    cols = np.r_[0:7, 21:28]
    np.testing.assert_array_equal(out[:, :, cols], 255 - images[:, :, cols])
    np.testing.assert_array_equal(out[:, :, 7:21], images[:, :, 7:21])


def test_brightness(images, corrupted):
    expected = np.clip(images.astype(int) + 128, 0, 255)  # +0.5 -> +127.5, rounded half to even
    assert np.abs(corrupted("brightness").astype(int) - expected).max() <= 1


def test_gaussian_noise_std():
    # the raw (unclipped) corruption adds N(0, 0.38^2)
    rng = np.random.default_rng(0)
    noise = np.stack([C.gaussian_noise(np.full((28, 28), 0.5), rng) - 0.5 for _ in range(20)])
    assert abs(noise.std() - 0.38) < 0.01 and abs(noise.mean()) < 0.01


def test_frost_index_never_frost6():
    rng = np.random.default_rng(0)
    drawn = {C._frost_index(rng) for _ in range(500)}
    assert drawn == {0, 1, 2, 3, 4}
    for i in range(6):
        tex = C._frost_image(i)
        assert tex.dtype == np.uint8 and tex.ndim == 2 and min(tex.shape) > 28


def test_frost_formula():
    x = np.zeros((28, 28))
    y = C.get_corruption("frost")(x, np.random.default_rng(7))
    # on a black image the output is 0.75 * (a 28x28 crop of a frost texture) / 255
    rng = np.random.default_rng(7)
    tex = C._frost_image(C._frost_index(rng))
    r = int(rng.integers(0, tex.shape[0] - 28))
    c = int(rng.integers(0, tex.shape[1] - 28))
    np.testing.assert_allclose(y, 0.75 * tex[r : r + 28, c : c + 28] / 255.0)


def test_line_profile():
    prof = C._line_profile(2, 10, 25, 10)  # horizontal line on row 10, columns [2, 25)
    np.testing.assert_allclose(prof[10, 2:25], 1.0)
    assert (prof[:, :2] == 0).all() and (prof[:, 25:] == 0).all()
    assert (prof[[8, 12], :] == 0).all()  # log(1 - 2/2.3) + 1 < 0
    np.testing.assert_allclose(prof[9, 5], np.log(1 - 1 / 2.3) + 1)


def test_dotted_line_bands():
    out = C.corrupt_images(np.zeros((30, 28, 28), np.uint8), "dotted_line")
    lit_cols = (out > 0).any(axis=(0, 1))
    zero_bands = np.r_[0:2, 4:6, 8:10, 12:14, 16:18, 20:22, 24:26, 27]
    assert not lit_cols[zero_bands].any()
    assert lit_cols[np.r_[2:4, 6:8, 10:12, 14:16, 18:20, 22:24, 26]].all()


def test_zigzag_and_line_extent():
    zero = np.zeros((30, 28, 28), np.uint8)
    z = C.corrupt_images(zero, "zigzag")
    lit = (z > 0).any(axis=(0, 1))
    assert not lit[:2].any() and not lit[26:].any() and lit[2:25].all()
    ln = C.corrupt_images(zero, "line")
    assert ((ln > 0).sum(axis=(1, 2)) > 15).all()


def test_fog_and_spatter_sanity(images, corrupted):
    fogged = corrupted("fog").astype(np.float64)
    # fog lifts the background: mean goes up on the (mostly black) digits
    assert (fogged.mean(axis=(1, 2)) > images.mean(axis=(1, 2))).all()
    # spatter paints grey 63 blobs
    sp = corrupted("spatter")
    assert ((sp > 40) & (sp < 80) & (images == 0)).any(axis=(1, 2)).mean() > 0.5


def _centroid(img: np.ndarray) -> np.ndarray:
    w = img.astype(np.float64)
    rows, cols = np.indices(w.shape)
    return np.array([(w * rows).sum(), (w * cols).sum()]) / w.sum()


def _slope_dcol_drow(img: np.ndarray) -> float:
    """Slope d(column)/d(row) of a thin near-vertical line, from per-row centroids over the middle rows."""
    w = img.astype(np.float64)[6:22]
    cols = np.arange(28)
    centre_cols = (w * cols).sum(axis=1) / w.sum(axis=1)
    return float(np.polyfit(np.arange(6, 22), centre_cols, 1)[0])


def test_geometric_conventions():
    block = np.zeros((1, 28, 28), np.uint8)
    block[0, 13:15, 13:15] = 255
    for name in ("shear", "rotate", "scale"):  # affine about (13.5, 13.5)
        for seed in range(4):
            out = C.corrupt_images(block, name, seed=seed)[0]
            np.testing.assert_allclose(_centroid(out), [13.5, 13.5], atol=0.05)
    shifts = set()
    for seed in range(8):
        out = C.corrupt_images(block, "translate", seed=seed)[0]
        d = _centroid(out) - 13.5
        np.testing.assert_allclose(np.abs(d), [3.0, 3.0], atol=1e-6)
        shifts.add(tuple(np.sign(d)))
    assert len(shifts) > 1

    vertical = np.zeros((1, 28, 28), np.uint8)
    vertical[0, :, 13:15] = 255
    signs = set()
    for seed in range(8):
        # shear: inverse map [[1, -sin s], [0, cos s]] -> the line tilts by sin(0.4) column per row
        k = _slope_dcol_drow(C.corrupt_images(vertical, "shear", seed=seed)[0])
        assert abs(abs(k) - np.sin(0.4)) < 0.01, k
        signs.add(np.sign(k))
        # rotate by 0.4 rad -> slope tan(0.4)
        k = _slope_dcol_drow(C.corrupt_images(vertical, "rotate", seed=seed)[0])
        assert abs(abs(k) - np.tan(0.4)) < 0.01, k
    assert signs == {-1.0, 1.0}

    full = np.full((1, 28, 28), 255, np.uint8)
    lit = C.corrupt_images(full, "scale")[0] > 127
    side = lit.any(axis=0).sum()
    assert side in (19, 20, 21), side  # 28 * 0.7 = 19.6


def test_plasma_fractal_range():
    f = C._plasma_fractal(np.random.default_rng(0), 256, 1.4)
    assert f.shape == (256, 256)
    assert f.min() == 0.0 and f.max() == 1.0
