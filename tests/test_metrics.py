"""The collapse instrument validated on cases whose answer is known.

Real held-out MNIST must look real (no collapse, metrics at their real-vs-real values); constructed
collapse (one digit, missing digits, a few repeated prototypes, near-duplicates) must be detected with
the right kind; FLD must grow with corruption strength.
"""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.instrument.calibration import calibrate
from pipeline.instrument.evaluation import evaluate_images
from pipeline.common.params import EvaluateParams
from tests.conftest import repo_params

N = 2000


@pytest.fixture(scope="module")
def settings() -> EvaluateParams:
    s = repo_params()["evaluate"] | {"n_samples": N, "kid_subsets": 10, "kid_subset_size": 500, "calibration_subsets": 6}
    return EvaluateParams.model_validate(s)


@pytest.fixture(scope="module")
def calibration(instrument, small_mnist, settings):
    _, ref = instrument
    return calibrate(ref, small_mnist.x_train, settings, seed=0)


@pytest.fixture(scope="module")
def measure(instrument, calibration, settings):
    model, ref = instrument

    def run(images, labels=None):
        return evaluate_images(images, labels, model, ref, calibration, settings, seed=0)

    return run


def test_real_held_out_images_are_not_collapsed(measure, mnist, calibration):
    rng = np.random.default_rng(1)
    idx = rng.choice(len(mnist.x_test), N, replace=False)
    m = measure(mnist.x_test[idx])
    real = calibration["real"]
    assert m["collapse"] == {"detected": False, "kind": "none", "evidence": []}
    assert m["class_coverage"] == 10
    # Test images are a different sample of the same distribution: at the real-vs-real floor.
    assert m["fld"] <= 2.0 * real["fld"]["max"]
    assert abs(m["kid"]) <= 3 * max(abs(real["kid"]["max"]), abs(real["kid"]["min"])) + 1e-3
    for key in ("precision", "recall", "density", "coverage"):
        assert abs(m[key] - real[key]["mean"]) < 0.1, (key, m[key], real[key])
    assert m["intra_class_diversity"] == pytest.approx(1.0, abs=0.1)
    assert m["duplicate_rate"] < 0.02
    assert 0.8 < m["memorisation_ratio"] < 1.25
    assert m["mnist_score"] == pytest.approx(real["mnist_score"]["mean"], abs=0.5)
    assert m["mnist_score"] <= 10.0


def test_random_real_training_subsets_are_not_collapsed(measure, small_mnist):
    for seed in range(3):
        idx = np.random.default_rng(100 + seed).choice(len(small_mnist.x_train), N, replace=False)
        assert measure(small_mnist.x_train[idx])["collapse"]["kind"] == "none"


def test_a_single_digit_is_inter_class_collapse(measure, mnist):
    threes = mnist.x_test[mnist.y_test == 3][:N]
    m = measure(threes)
    assert m["collapse"]["detected"] and m["collapse"]["kind"] == "inter-class"
    assert m["class_coverage"] == 1
    assert m["class_kl"] > 1.5  # about ln(10)
    assert any("9 of 10 digits" in e for e in m["collapse"]["evidence"])


def test_missing_digits_are_named_in_the_evidence(measure, mnist):
    keep = ~np.isin(mnist.y_test, [0, 7])
    m = measure(mnist.x_test[keep][:N])
    assert m["collapse"]["kind"] == "inter-class"
    assert m["class_coverage"] == 8
    evidence = " ".join(m["collapse"]["evidence"])
    assert "0 (" in evidence and "7 (" in evidence and "2 of 10 digits" in evidence


def _prototypes(mnist, instrument, per_class: int) -> np.ndarray:
    """N images drawn from `per_class` prototypes of each digit, in equal shares. Prototypes are
    test images the evaluator reads correctly, so the classes themselves stay intact."""
    from pipeline.instrument.evaluator import embed

    model, _ = instrument
    read_right = embed(model, mnist.x_test).predicted == mnist.y_test
    rng = np.random.default_rng(2)
    picks = [rng.choice(np.flatnonzero((mnist.y_test == d) & read_right), per_class, replace=False) for d in range(10)]
    base = mnist.x_test[np.concatenate(picks)]
    return base[np.arange(N) % len(base)]


def test_a_few_repeated_prototypes_per_class_are_intra_class_collapse(measure, mnist, instrument):
    m = measure(_prototypes(mnist, instrument, per_class=3))
    assert m["collapse"]["kind"] == "intra-class"
    assert m["class_coverage"] == 10
    # With k prototypes only ~1/k of same-class pairs coincide, so the mean pairwise distance drops to
    # about (1 - 1/k) of real; the near-duplicate rate is what gives a few prototypes away.
    assert m["intra_class_diversity"] < 0.8
    assert m["duplicate_rate"] > 0.9
    assert m["support_size"] is not None and m["support_size"] < 100  # 30 distinct images in truth


def test_one_prototype_per_class_has_no_intra_class_diversity(measure, mnist, instrument):
    m = measure(_prototypes(mnist, instrument, per_class=1))
    assert m["collapse"]["kind"] == "intra-class"
    assert m["intra_class_diversity"] < 0.05
    assert any("too alike" in e for e in m["collapse"]["evidence"])


def test_near_duplicates_are_detected(measure, mnist, instrument):
    rng = np.random.default_rng(3)
    base = _prototypes(mnist, instrument, per_class=20).astype(np.float32) / 255.0
    jittered = np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1).astype(np.float32)
    m = measure(jittered)
    assert m["collapse"]["kind"] == "intra-class"
    assert m["duplicate_rate"] > 0.5
    assert any("near-duplicate" in e for e in m["collapse"]["evidence"])


def _test_subset(mnist) -> np.ndarray:
    idx = np.random.default_rng(4).choice(len(mnist.x_test), N, replace=False)
    return mnist.x_test[idx].astype(np.float32) / 255.0


@pytest.mark.parametrize(
    "corrupt, strengths",
    [
        ("noise", [0.0, 0.1, 0.2, 0.4]),
        ("blur", [0.0, 0.7, 1.2, 2.0]),
        ("dropout", [0.0, 0.2, 0.4, 0.6]),
    ],
)
def test_fld_grows_with_corruption_strength(measure, mnist, corrupt, strengths):
    clean = _test_subset(mnist)
    rng = np.random.default_rng(5)
    flds = []
    for s in strengths:
        if corrupt == "noise":
            x = np.clip(clean + rng.normal(0, s, clean.shape), 0, 1)
        elif corrupt == "blur":
            x = ndimage.gaussian_filter(clean, sigma=(0, s, s)) if s else clean
        else:
            x = clean * (rng.random(clean.shape) >= s)
        flds.append(measure(x.astype(np.float32))["fld"])
    assert all(a < b for a, b in zip(flds, flds[1:])), flds


def test_conditional_samples_get_label_accuracy(measure, mnist, instrument):
    idx = np.random.default_rng(6).choice(len(mnist.x_test), N, replace=False)
    right = measure(mnist.x_test[idx], mnist.y_test[idx].astype(np.int64))
    wrong = measure(mnist.x_test[idx], (mnist.y_test[idx].astype(np.int64) + 1) % 10)
    # Real digits asked for correctly: agreement is the evaluator's own accuracy.
    assert right["label_accuracy"] == pytest.approx(float(instrument[1].test_accuracy), abs=0.03)
    assert wrong["label_accuracy"] < 0.1
    assert measure(mnist.x_test[idx])["label_accuracy"] is None


def test_memorised_training_images_are_flagged_by_the_memorisation_ratio(measure, small_mnist):
    idx = np.random.default_rng(7).choice(len(small_mnist.x_train), N, replace=False)
    m = measure(small_mnist.x_train[idx])  # copies of training images
    assert m["memorisation_ratio"] < 0.1


def test_calibration_thresholds_sit_beyond_every_real_subset(calibration):
    real, t = calibration["real"], calibration["thresholds"]
    assert real["min_share_ratio"]["min"] > t["share_ratio"]
    assert real["class_kl"]["max"] < t["class_kl"]
    assert real["intra_class_diversity"]["min"] > t["intra_class_diversity"]
    assert real["duplicate_rate"]["max"] < t["duplicate_rate"]
    assert calibration["duplicate_distance"] > 0


def test_first_collapse_is_losing_a_digit_the_model_had():
    import pandas as pd

    from pipeline.instrument.evaluation import first_collapse_step

    curve = pd.DataFrame({"step": [1000, 2000, 3000, 4000], "class_coverage": [4, 10, 8, 10]})
    assert first_collapse_step(curve) == 3000
    never_full = pd.DataFrame({"step": [1000, 2000], "class_coverage": [3, 6]})
    assert first_collapse_step(never_full) == 1000
    healthy = pd.DataFrame({"step": [1000, 2000], "class_coverage": [7, 10]})
    assert first_collapse_step(healthy) is None
