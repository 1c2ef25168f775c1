import numpy as np
import pytest
import torch

from selfsup.vision.evaluate import knn_predict, stratified_subset, train_linear_probe


def test_knn_votes_by_weighted_nearest_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_predict(bank, labels, queries, 2, k=2, temperature=0.1).tolist() == [0, 1]
    # with k = all, the three class-1 points outvote two close class-0 points only when the weights are flat
    assert knn_predict(bank, labels, queries[:1], 2, k=5, temperature=100.0).tolist() == [1]
    assert knn_predict(bank, labels, queries[:1], 2, k=5, temperature=0.05).tolist() == [0]
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(bank, labels, queries, 2, k=6, temperature=0.1)


def test_stratified_subset_keeps_every_class_and_is_seeded():
    labels = np.repeat(np.arange(10), 100)
    subset = stratified_subset(labels, 0.01, seed=3)
    assert np.bincount(labels[subset]).tolist() == [1] * 10
    assert np.array_equal(subset, stratified_subset(labels, 0.01, seed=3))
    assert len(stratified_subset(labels, 1.0, seed=0)) == 1000


def test_linear_probe_learns_a_separable_problem_even_from_few_labels():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4
    labels = torch.from_numpy(np.repeat(np.arange(3), 5))
    features = torch.from_numpy(centers[labels.numpy()] + rng.normal(size=(15, 8))).float() + 100.0  # far off-centre
    probe = train_linear_probe(features, labels, 3, epochs=1, lr=0.05, seed=0)
    assert (probe(features).argmax(dim=1) == labels).float().mean() == 1.0


def test_raw_pixels_are_the_flattened_image_in_unit_range():
    from selfsup.vision.evaluate import RawPixels

    images = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)  # [1, 1, 2, 2]
    assert RawPixels()(images).tolist() == [pytest.approx([0.0, 1.0, 0.2, 0.4])]
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        RawPixels()(images[0])
