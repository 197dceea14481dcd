"""The official scores: hand-computed values, agreement with neuralpredictors, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sensorium import metrics

# 3 trials x 2 neurons; images 7, 7, 9.
RESP3 = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 3.0]])
PRED3 = np.array([[1.0, 1.0], [3.0, 2.0], [4.0, 2.0]])
IDS3 = np.array([7, 7, 9])

# 4 trials x 2 neurons; two images shown twice each.
RESP4 = np.array([[1.0, 0.0], [3.0, 2.0], [6.0, 1.0], [8.0, 1.0]])
PRED4 = np.array([[1.0, 0.0], [1.0, 0.0], [9.0, 0.0], [9.0, 0.0]])
IDS4 = np.array([7, 7, 9, 9])


def test_single_trial_correlation_by_hand():
    # neuron 0: resp deviations (-1, 0, 1), pred (1, 3, 4) deviations (-5/3, 1/3, 4/3):
    #   cov = 1, var_resp = 2/3, var_pred = 14/9  -> corr = sqrt(27/28)
    # neuron 1: resp deviations (-1, 1, 0), pred (1, 2, 2) deviations (-2/3, 1/3, 1/3):
    #   cov = 1/3, var_resp = 2/3, var_pred = 2/9  -> corr = sqrt(3)/2
    expected = np.array([math.sqrt(27 / 28), math.sqrt(3) / 2])
    per_neuron = metrics.single_trial_correlation(PRED3, RESP3, per_neuron=True)
    np.testing.assert_allclose(per_neuron, expected, atol=1e-7)
    assert metrics.single_trial_correlation(PRED3, RESP3) == pytest.approx(expected.mean(), abs=1e-7)


def test_correlation_to_average_by_hand():
    # image means: neuron 0 resp (1.5, 3) and pred (2, 4) rise together -> 1;
    # neuron 1 resp (3, 3) is constant -> 0.
    per_neuron = metrics.correlation_to_average(PRED3, RESP3, IDS3, per_neuron=True)
    np.testing.assert_allclose(per_neuron, [1.0, 0.0], atol=1e-7)
    assert metrics.correlation_to_average(PRED3, RESP3, IDS3) == pytest.approx(0.5, abs=1e-7)


def test_fev_and_feve_by_hand():
    # neuron 0: values 1, 3, 6, 8 -> total_var = 29/3; repeat variances 2 and 2 -> noise_var = 2;
    #   FEV = (29/3 - 2) / (29/3) = 23/29; MSE of pred (1, 1, 9, 9) = (0 + 4 + 9 + 1) / 4 = 3.5;
    #   FEVE = 1 - (3.5 - 2) / (23/3) = 37/46.
    # neuron 1: values 0, 2, 1, 1 -> total_var = 2/3; repeat variances 2 and 0 -> noise_var = 1;
    #   FEV = (2/3 - 1) / (2/3) = -1/2 < 0.15, so it is left out of the FEVE average.
    np.testing.assert_allclose(metrics.fev(RESP4, IDS4), [23 / 29, -0.5])
    per_neuron = metrics.feve(PRED4, RESP4, IDS4, per_neuron=True)
    assert per_neuron[0] == pytest.approx(37 / 46)
    assert np.isnan(per_neuron[1])
    assert metrics.feve(PRED4, RESP4, IDS4) == pytest.approx(37 / 46)


def test_feve_of_image_mean_prediction_by_hand():
    # Predicting each image's mean response leaves MSE = noise_var * (r - 1) / r with r repeats, so
    # FEVE = 1 + noise_var / (r * (total_var - noise_var)) = 1 + 2 / (2 * 23/3) = 26/23 for neuron 0.
    pred = np.array([[2.0, 1.0], [2.0, 1.0], [7.0, 1.0], [7.0, 1.0]])
    assert metrics.feve(pred, RESP4, IDS4) == pytest.approx(26 / 23)


def test_score_all_keys_and_values():
    scores = metrics.score_all(PRED4, RESP4, IDS4)
    assert tuple(scores) == metrics.SCORE_NAMES
    assert scores["feve"] == pytest.approx(37 / 46)
    assert all(isinstance(v, float) for v in scores.values())


def test_scores_do_not_depend_on_row_order():
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(12), 4)
    resp = rng.gamma(2.0, size=(48, 5)) + ids[:, None] * 0.3
    pred = resp + rng.normal(size=resp.shape)
    order = rng.permutation(48)
    a = metrics.score_all(pred, resp, ids)
    b = metrics.score_all(pred[order], resp[order], ids[order])
    assert a == pytest.approx(b)


def _repeats(values: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    return [values[ids == i] for i in np.unique(ids)]


@pytest.mark.parametrize("repeats", [[5] * 8, [2, 3, 4, 5, 6, 7, 8, 9]], ids=["equal", "unequal"])
def test_agrees_with_neuralpredictors(repeats):
    import sensorium.compat  # noqa: F401  (before neuralpredictors)
    from neuralpredictors.measures import corr as np_corr
    from neuralpredictors.measures.np_functions import fev as np_fev

    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(len(repeats)), repeats)
    rng.shuffle(ids)
    signal = rng.normal(size=(len(repeats), 6))[ids]
    resp = np.exp(signal + 0.5 * rng.normal(size=signal.shape))
    pred = np.exp(signal + rng.normal(size=signal.shape))
    np.testing.assert_allclose(metrics.corr(pred, resp), np_corr(pred, resp, axis=0), atol=1e-12)
    their_fev, their_feve = np_fev(_repeats(resp, ids), _repeats(pred, ids), return_exp_var=True)
    np.testing.assert_allclose(metrics.fev(resp, ids), their_fev, atol=1e-12)
    np.testing.assert_allclose(metrics.feve(pred, resp, ids, fev_threshold=-np.inf, per_neuron=True), their_feve)
    passing = their_fev >= 0.15
    assert passing.any()
    assert metrics.feve(pred, resp, ids) == pytest.approx(their_feve[passing].mean())


def test_constant_prediction_scores_zero_without_nan():
    pred = np.full_like(RESP4, 0.7)
    with np.errstate(all="raise"):
        per_neuron = metrics.single_trial_correlation(pred, RESP4, per_neuron=True)
        avg = metrics.correlation_to_average(pred, RESP4, IDS4, per_neuron=True)
    np.testing.assert_array_equal(per_neuron, 0.0)
    np.testing.assert_array_equal(avg, 0.0)


def test_constant_response_has_zero_fev_without_nan():
    resp = RESP4.copy()
    resp[:, 1] = 0.0  # a silent neuron
    assert metrics.fev(resp, IDS4)[1] == 0.0
    assert metrics.feve(PRED4, resp, IDS4) == pytest.approx(37 / 46)


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(6), 3)
    resp = rng.gamma(2.0, size=(18, 4))
    assert metrics.single_trial_correlation(resp, resp) == pytest.approx(1.0, abs=1e-7)
    # any positive affine map of the response is a perfect prediction for correlation
    assert metrics.correlation_to_average(resp * 3 + 1, resp, ids) == pytest.approx(1.0, abs=1e-7)


def test_feve_of_the_true_mean_is_about_one():
    # The noise-free expected response explains all explainable variance, up to estimation noise.
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(400), 10)
    expected = rng.normal(size=(400, 20))[ids]
    resp = expected + rng.normal(size=expected.shape)
    assert metrics.feve(expected, resp, ids) == pytest.approx(1.0, abs=0.02)


def test_feve_is_nan_when_no_neuron_passes():
    resp = RESP4[:, 1:]  # the neuron with FEV = -1/2
    assert math.isnan(metrics.feve(PRED4[:, 1:], resp, IDS4))
    assert math.isnan(metrics.score_all(PRED4[:, 1:], resp, IDS4)["feve"])


def test_unrepeated_images_are_left_out_of_the_noise_estimate():
    resp = np.vstack([RESP4, [[100.0, 5.0]]])
    ids = np.append(IDS4, 11)
    total_var = resp.var(axis=0, ddof=1)
    np.testing.assert_allclose(metrics.fev(resp, ids), (total_var - [2.0, 1.0]) / total_var)
    assert np.isnan(metrics.fev(RESP4, np.arange(4))).all()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="equal shape"):
        metrics.single_trial_correlation(PRED3, RESP4)
    with pytest.raises(ValueError, match="image_ids"):
        metrics.feve(PRED4, RESP4, IDS3)
