"""scripts/fashion_router_study.py's offline Dual RS (issue #18): the constant router is the
1.0 expert's certificate at alpha/2, and a confidence router sends unsure samples low."""
from pathlib import Path

import numpy as np
import pytest

from script_module import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fashion_router_study.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="scripts/ not present")


@pytest.fixture(scope="module")
def study():
    return load_script("fashion_router_study")


def votes(study, confident: bool):
    """Two inputs of class 3; every expert votes 3 on 95% of its samples; the 1.0 expert's
    logits make class 3 confident (softmax ~1) or unsure (~0.4)."""
    levels, s = len(study.SIGMAS), study.N0 + study.N
    counts = np.zeros((levels, 2, 2, 10), dtype=np.int64)
    counts[:, 0, :, 3], counts[:, 0, :, 0] = 95, 5
    counts[:, 1, :, 3], counts[:, 1, :, 0] = 1900, 100
    logits = np.zeros((2, s, 10), dtype=np.float16)
    logits[:, :, 3] = 10.0 if confident else 1.9
    data = dict(counts=counts, logits_top=logits, y=np.array([3, 3]), positions=np.arange(2))
    return study.Votes(data, np.arange(2))


def test_constant_router_is_the_top_expert_at_half_alpha(study):
    v = votes(study, confident=True)
    capped, uncapped, level, r_ve = v.dual(np.full((2, study.N0 + study.N), study.TOP))
    assert (level == study.TOP).all()
    assert r_ve == pytest.approx(study.R_VE_OF_COUNT[-1])  # unanimous: the reach, 2.67
    assert capped == pytest.approx(v.radius[study.TOP]) and uncapped == pytest.approx(capped)


def test_confidence_router_sends_unsure_inputs_low_and_caps_by_r_ve(study):
    tops, lows = [study.TOP] * 10, [1] * 10
    sure = votes(study, confident=True)
    assert (sure.dual(study.threshold_levels(sure, tops, lows, [0.5] * 10))[2] == study.TOP).all()
    unsure = votes(study, confident=False)
    capped, uncapped, level, r_ve = unsure.dual(
        study.threshold_levels(unsure, tops, lows, [0.5] * 10))
    assert (level == 1).all() and uncapped == pytest.approx(unsure.radius[1])
    assert capped == pytest.approx(np.minimum(r_ve, unsure.radius[1]))
