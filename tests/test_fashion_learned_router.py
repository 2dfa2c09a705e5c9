"""scripts/fashion_learned_router.py's offline certificates (issue #18): the level-set ceiling
against Clopper-Pearson bounds computed independently with scipy, and the perfect-low-experts
bound."""
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta, norm

from script_module import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fashion_learned_router.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="scripts/ not present")


@pytest.fixture(scope="module")
def learned():
    return load_script("fashion_learned_router")


def radius(k, n, alpha, sigma):
    """CERTIFY's radius from scratch: sigma * Phi^-1(Beta.ppf(alpha, k, n - k + 1)), None on
    abstention."""
    p = beta.ppf(alpha, k, n - k + 1) if k > 0 else 0.0
    return sigma * norm.ppf(p) if p >= 0.5 else None


def data_for(study, class_votes, y=3):
    """One input per row of ``class_votes``: (levels,) fraction of each expert's votes for
    class 3 (the rest to class 0), in selection and estimation alike."""
    levels, m = len(study.SIGMAS), len(class_votes)
    counts = np.zeros((levels, 2, m, 10), dtype=np.int64)
    for i, fractions in enumerate(class_votes):
        for j, f in enumerate(fractions):
            for part, n in ((0, study.N0), (1, study.N)):
                counts[j, part, i, 3] = round(f * n)
                counts[j, part, i, 0] = n - round(f * n)
    logits = np.zeros((m, study.N0 + study.N, 10), dtype=np.float16)
    return dict(counts=counts, logits_top=logits, y=np.full(m, y), positions=np.arange(m))


def run(learned, data, levels, sigma_ve=1.0):
    study = learned.study
    rows = np.arange(len(data["y"]))
    v = study.Votes(data, rows).with_estimator_sigma(sigma_ve)
    got, correct = learned.level_set_radius(data, rows, levels, v.estimator_sigma)
    assert ((got > 0) <= correct).all()
    return got, v, correct


def test_unanimous_top_level_is_its_own_certificate_at_a_third_of_the_shares(learned):
    study = learned.study
    data = data_for(study, [(1.0, 1.0, 1.0)])
    levels = np.full((1, study.N0 + study.N), study.TOP)
    got, _, _ = run(learned, data, levels)
    share = study.ALPHA / 2 / 3
    # {1.0}: min(R_ve, R_cls(1.0)), both the unanimous bound at sigma 1; larger sets add smaller sigmas
    assert got[0] == pytest.approx(radius(study.N, study.N, share, 1.0), abs=1e-9)


def test_a_split_estimator_certifies_through_the_pair_where_plain_dual_rs_abstains(learned):
    study = learned.study
    data = data_for(study, [(0.0, 1.0, 1.0)])  # the 0.25 expert never votes the class
    levels = np.empty((1, study.N0 + study.N), dtype=np.int64)
    levels[0, 0::2], levels[0, 1::2] = 1, study.TOP  # half 0.5, half 1.0
    got, v, _ = run(learned, data, levels)
    assert v.dual(levels)[0][0] == 0.0  # one level, half the votes: the estimator abstains
    share = study.ALPHA / 2 / 3
    # {0.5, 1.0}: every estimator vote, so min(R_ve = reach at sigma 1, R_cls(0.5), R_cls(1.0))
    expected = min(radius(study.N, study.N, share, 1.0), radius(study.N, study.N, share, 0.5))
    assert got[0] == pytest.approx(expected, abs=1e-9)


def test_sets_with_an_abstaining_expert_and_wrong_classes_certify_nothing(learned):
    study = learned.study
    s = study.N0 + study.N
    data = data_for(study, [(0.0, 0.0, 0.6)])  # only 1.0 votes the class, and barely
    levels = np.full((1, s), 0)  # the estimator routes to 0.25, whose expert votes class 0
    got, _, _ = run(learned, data, levels)
    assert got[0] == 0.0  # class 0 is wrong (y = 3)
    data = data_for(study, [(1.0, 1.0, 1.0)], y=0)
    got, _, _ = run(learned, data, np.full((1, s), study.TOP))
    assert got[0] == 0.0
    # the estimator routes to 1.0 on its selection samples, then splits its estimation votes
    # between 0.25 and 1.0: only the set {0.25, 1.0} holds a majority, and the 0.25 expert
    # abstains on the class, so nothing is certified, not even at radius 0
    data = data_for(study, [(0.4, 1.0, 1.0), (1.0, 1.0, 1.0)])
    levels = np.full((2, s), study.TOP)
    levels[:, study.N0::2] = 0
    got, _, correct = run(learned, data, levels)
    assert not correct[0] and got[0] == 0.0
    assert correct[1] and got[1] > 0  # every expert certifies: {0.25, 1.0} holds


def test_estimator_sigma_scales_r_ve(learned):
    study = learned.study
    data = data_for(study, [(1.0, 1.0, 1.0)])
    v = learned.study.Votes(data, np.arange(1)).with_estimator_sigma(2.0)
    assert v.r_ve_of_count[-1] == pytest.approx(radius(study.N, study.N, study.HALF_ALPHA, 2.0))


def test_perfect_low_experts_bound(learned):
    study = learned.study
    data = data_for(study, [(0.0, 0.0, 1.0), (0.0, 0.0, 1.0)])
    v = study.Votes(data, np.arange(2))
    level = np.array([0, study.TOP])
    r_ve = np.array([10.0, 10.0])
    reach_025 = radius(study.N, study.N, study.HALF_ALPHA, 0.25)
    expected = (reach_025 + v.radius[study.TOP][1]) / 2
    assert learned.ideal_low_experts(v, level, r_ve) == pytest.approx(expected, abs=1e-9)
    # the cap still applies
    assert learned.ideal_low_experts(v, level, np.array([0.1, 0.1])) == pytest.approx(0.1)
