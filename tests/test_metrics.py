# This file is part of meas_rbnet.
"""Metrics against hand-computed cases (numpy only, fast)."""

import numpy as np
import pytest

from lsst.meas.rbnet.training import metrics as M


def test_roc_auc_perfect_inverted_random():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert M.roc_auc(s, y) == 1.0
    assert M.roc_auc(-s, y) == 0.0
    rng = np.random.default_rng(1)
    yr = rng.integers(0, 2, 20000)
    assert abs(M.roc_auc(rng.random(20000), yr) - 0.5) < 0.02


def test_roc_auc_ties_and_hand_case():
    # All scores tied: every pair counts one half.
    assert M.roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # Pairs (real, bogus): (0.8 vs 0.3) win, (0.8 vs 0.8) tie, (0.4 vs 0.3) win, (0.4 vs 0.8) loss
    # -> (1 + 0.5 + 1 + 0) / 4.
    assert M.roc_auc([0.3, 0.8, 0.8, 0.4], [0, 0, 1, 1]) == pytest.approx(2.5 / 4)


def test_roc_auc_needs_both_classes_and_valid_input():
    with pytest.raises(ValueError, match="both real"):
        M.roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        M.roc_auc([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="0 \\(bogus\\) or 1"):
        M.roc_auc([0.1, 0.2], [2, 0])
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([np.nan, 0.2], [1, 0])


def test_roc_curve_matches_auc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(y, 1.0), 1)  # rounding makes ties
    fpr, tpr, thr = M.roc_curve(s, y)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(thr) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc(s, y), abs=1e-12)


def test_accuracy_f1_purity_completeness_hand_case():
    s = np.array([0.9, 0.8, 0.6, 0.4, 0.3, 0.2])
    y = np.array([1, 0, 1, 1, 0, 0])
    # At 0.5: selected {0.9 R, 0.8 B, 0.6 R}: TP 2, FP 1, FN 1, TN 2.
    assert M.accuracy(s, y, 0.5) == pytest.approx(4 / 6)
    assert M.f1(s, y, 0.5) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert M.purity_completeness(s, y, 0.5) == pytest.approx((2 / 3, 2 / 3))
    # Threshold is inclusive.
    assert M.purity_completeness(s, y, 0.6) == pytest.approx((2 / 3, 2 / 3))
    # Nothing selected: purity 1 by convention, completeness 0.
    assert M.purity_completeness(s, y, 2.0) == (1.0, 0.0)
    # A mask restricts the sources considered.
    mask = [True, False, True, True, False, False]
    assert M.purity_completeness(s, y, 0.5, mask=mask) == pytest.approx((1, 2 / 3))


def test_threshold_and_completeness_at_purity():
    s = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = np.array([1, 1, 0, 1, 1, 0, 0])
    # Purity 1 is reached down to 0.9 (completeness 2/4); purity >= 0.8 down to 0.6 (4/5, completeness 1).
    assert M.completeness_at_purity(s, y, 1.0) == pytest.approx(0.5)
    assert M.completeness_at_purity(s, y, 0.8) == pytest.approx(1.0)
    t = M.threshold_for_purity(s, y, 0.8)
    # Halfway between the lowest selected score (0.6) and the next (0.5).
    assert t == pytest.approx(0.55)
    assert M.purity_completeness(s, y, t) == pytest.approx((0.8, 1.0))
    t1 = M.threshold_for_purity(s, y, 1.0)
    assert t1 == pytest.approx(0.85)
    assert M.purity_completeness(s, y, t1) == pytest.approx((1.0, 0.5))
    # Unreachable: the top score is bogus and the target is 1.
    assert M.threshold_for_purity([0.9, 0.1], [0, 1], 1.0) == np.inf
    assert M.completeness_at_purity([0.9, 0.1], [0, 1], 1.0) == 0.0
    # With a mask (e.g. SNR >= 6) the bogus source at 0.8 is excluded -> purity 1 at full completeness.
    mask = np.array([True, True, False, True, True, True, True])
    assert M.completeness_at_purity(s, y, 0.99, mask=mask) == pytest.approx(1.0)


def test_ece_and_reliability():
    rng = np.random.default_rng(3)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)  # calibrated by construction
    assert M.expected_calibration_error(p, y) < 0.01
    # Overconfident scores: probabilities pushed towards 0/1 by a temperature of 1/3.
    z = np.log(p / (1 - p))
    p_over = 1 / (1 + np.exp(-3 * z))
    assert M.expected_calibration_error(p_over, y) > 0.1
    # Hand case: two bins, all predictions 0.25 with 50% real -> ECE 0.25.
    assert M.expected_calibration_error([0.25] * 4, [0, 1, 0, 1], n_bins=2) == pytest.approx(0.25)
    mean_p, frac, counts = M.reliability_curve([0.1, 0.2, 0.9, 1.0], [0, 1, 1, 1], n_bins=2)
    assert counts.tolist() == [2, 2]
    assert mean_p == pytest.approx([0.15, 0.95])
    assert frac == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        M.expected_calibration_error([1.5, 0.2], [1, 0])


def test_log_loss_brier():
    assert M.brier_score([1.0, 0.0], [1, 0]) == 0.0
    assert M.log_loss([0.5, 0.5], [1, 0]) == pytest.approx(np.log(2))


def test_confusion_matrix_and_class_fractions():
    s = np.array([0.9, 0.2, 0.7, 0.6, 0.1, 0.8])
    y = np.array([1, 1, 0, 0, 0, 1])
    c = np.array(["real_new", "real_fainter", "cosmic_ray", "dipole", "dipole", "real_new"])
    names, counts = M.confusion_matrix(s, y, 0.5)
    assert names == ["bogus", "real"]
    assert counts.tolist() == [[1, 2], [1, 2]]
    names, counts = M.confusion_matrix(s, y, 0.5, classes=c)
    # Real classes first (canonical order), then artifacts in their canonical order.
    assert names == ["real_new", "real_fainter", "cosmic_ray", "dipole"]
    assert counts.tolist() == [[0, 2], [1, 0], [0, 1], [1, 1]]
    fr = M.class_fractions(s, y, c, 0.5)
    assert fr["real_new"]["completeness"] == 1.0
    assert fr["real_fainter"]["completeness"] == 0.0
    assert fr["dipole"]["leak"] == 0.5 and fr["dipole"]["n"] == 2 and fr["dipole"]["label"] == 0
