"""K-fold re-splits of a scan's train and validation trials (``data.split_folds``, ``retrain --splits``).

The official ``validation`` tier is one fixed draw of images; a split ensemble trains each member on another
draw. The train and validation rows of a scan are pooled and their distinct image ids dealt into K folds by
a seeded permutation: fold ``k`` becomes the validation tier, the other K - 1 folds the train tier. The test
tiers (``test``, ``final_test``) keep their rows.

Folds are assigned per image, not per trial: every presentation of an image lands in the same fold, so a
held-out score never rewards a model for having seen the same image in training (in SENSORIUM the
validation images are never shown in train, and the synthetic scans follow it; in both each train and
validation image is shown once, so an image is a trial there). Folds differ in size by at most one image.

    >>> import numpy as np
    >>> tiers = np.array(["train", "validation", "test", "train", "train", "validation"])
    >>> split_tiers(tiers, np.array([5, 6, 9, 7, 5, 8]), folds=2, fold=0, seed=0).tolist()
    ['train', 'validation', 'test', 'validation', 'train', 'train']
"""

from __future__ import annotations

import numpy as np

from sensorium.errors import UserError

POOLED = ("train", "validation")  # the tiers a split deals out again


def fold_of_images(image_ids: np.ndarray, folds: int, seed: int) -> dict[int, int]:
    """image id -> its fold (0 .. folds - 1) for the distinct ids of ``image_ids`` (any shape): the sorted ids
    permuted by ``np.random.default_rng(seed)``, the i-th of the permutation in fold ``i % folds``. The same
    ids and seed give the same folds, whatever their order or repeats. UserError when there are fewer
    distinct ids than folds (a fold would be empty)."""
    unique = np.unique(image_ids)
    if folds > len(unique):
        raise UserError(f"only {len(unique)} distinct train + validation images, fewer than the {folds} folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    return {int(image): i % folds for i, image in enumerate(unique[order])}


def split_tiers(tiers: np.ndarray, image_ids: np.ndarray, folds: int, fold: int, seed: int) -> np.ndarray:
    """(N,) tiers of a scan's N rows with its pooled train + validation rows dealt again: ``validation`` for
    the rows whose image is in fold ``fold`` of ``folds`` (:func:`fold_of_images`), ``train`` for the other
    pooled rows; every other row keeps its tier. ``tiers`` (N,) str, ``image_ids`` (N,) int."""
    tiers, image_ids = np.asarray(tiers), np.asarray(image_ids)
    pooled = np.isin(tiers, POOLED)
    fold_of = fold_of_images(image_ids[pooled], folds, seed)
    held_out = np.zeros(len(tiers), dtype=bool)
    held_out[pooled] = [fold_of[int(image)] == fold for image in image_ids[pooled]]
    return np.where(pooled, np.where(held_out, "validation", "train"), tiers)
