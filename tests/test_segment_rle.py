"""COCO RLE: round trips, and agreement with pycocotools.mask byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from gdino.core.rle import decode_mask, encode_mask, mask_to_runs, rle_area, runs_to_mask, string_to_runs

mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools (in [dev])")


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), bool)
    yield np.ones((5, 7), bool)
    yield np.eye(6, dtype=bool)
    m = np.zeros((40, 33), bool)
    m[3:30, 10:20] = True
    yield m
    yield rng.random((64, 48)) > 0.5  # many short runs
    yield rng.random((1, 200)) > 0.9
    big = np.zeros((300, 451), bool)  # long runs: multi-character and negative deltas
    big[:, :200] = True
    big[100:110, 300:301] = True
    yield big


@pytest.mark.parametrize("index", range(7))
def test_encode_matches_pycocotools(index):
    mask = list(_masks())[index]
    ours = encode_mask(mask)
    ref = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["size"] == [int(v) for v in ref["size"]]
    assert ours["counts"] == ref["counts"].decode("ascii")
    assert rle_area(ours) == int(mask_api.area(ref)) == int(mask.sum())


@pytest.mark.parametrize("index", range(7))
def test_round_trip_and_decode_of_pycocotools_output(index):
    mask = list(_masks())[index]
    assert np.array_equal(decode_mask(encode_mask(mask)), mask)
    ref = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert np.array_equal(decode_mask({"size": ref["size"], "counts": ref["counts"]}), mask)  # bytes counts
    assert np.array_equal(
        mask_api.decode({"size": ref["size"], "counts": encode_mask(mask)["counts"]}).astype(bool), mask
    )


def test_uncompressed_counts_and_runs():
    mask = np.array([[0, 1], [1, 1]], bool)  # column-major: 0,1,1,1
    assert mask_to_runs(mask) == [1, 3]
    assert mask_to_runs(np.ones((2, 2), bool)) == [0, 4]  # starts with an empty zero run
    assert np.array_equal(decode_mask({"size": [2, 2], "counts": [1, 3]}), mask)
    assert np.array_equal(runs_to_mask([1, 3], 2, 2), mask)
    ref = mask_api.frPyObjects({"size": [2, 2], "counts": [1, 3]}, 2, 2)
    assert np.array_equal(mask_api.decode(ref).astype(bool), mask)


def test_bad_rle_raises():
    with pytest.raises(ValueError):
        runs_to_mask([1, 2], 2, 2)  # sums to 3, not 4
    with pytest.raises(ValueError):
        string_to_runs("0" + chr(48 + 0x20))  # continuation bit on the last character
    with pytest.raises(ValueError):
        encode_mask(np.zeros((2, 2, 2), bool))
