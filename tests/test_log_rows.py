"""Row checks of a resumed log (log_rows), cell by cell."""
import re

import pytest

from dualrs_fast.bounds import certified_radius
from dualrs_fast.log_rows import RowError, certify_rules, largest_radius
from dualrs_fast.logs import COLUMNS

RULES = certify_rules(COLUMNS, labels=[1, 2, 0], indices=[0, 1, 2], num_classes=3, n=100,
                      alpha=0.01, sigma=0.5)


def row(idx="0", label="1", predict="1", radius="0.5", correct="1", time="0.100000"):
    return [idx, label, predict, radius, correct, time]


def test_largest_radius_is_that_of_all_votes():
    radius, abstain = certified_radius(100, 100, 0.01, 0.5)
    assert not abstain and largest_radius(100, 0.01, 0.5) == pytest.approx(float(radius), rel=1e-12)


@pytest.mark.parametrize("cells", [
    row(),
    row(radius=f"{largest_radius(100, 0.01, 0.5):.9g}"),
    row(radius="1.5e-05"),
    row(idx="1", label="2", predict="-1", radius="0", correct="0"),
    row(idx="1", label="2", predict="-1", radius="-0", correct="0"),  # '%.9g' of -0.0
    row(idx="2", label="0", predict="2", radius="0.25", correct="0"),
])
def test_rows_a_run_writes_pass(cells):
    assert RULES.check(cells) == int(cells[0])


@pytest.mark.parametrize("cells, message", [
    (row(radius=f"{largest_radius(100, 0.01, 0.5) * 1.001:.9g}"), "exceeds"),
    (row(radius="1_0"), "not a finite number"),
    (row(radius=" 0.5"), "not a finite number"),
    (row(radius="\uff10.5"), "not a finite number"),
    (row(radius="Infinity"), "not a finite number"),
    (row(time="nan"), "time 'nan'"),
    (row(idx="+0"), "idx '+0' is not an integer"),
    (row(idx="1", label="2", predict="-1", radius="0.1", correct="0"), "for an abstention"),
    (row(predict="3", correct="0"), "predict 3 is neither"),
    (row(idx="3"), "not among the inputs"),
    (row()[:5], "5 cells, expected 6"),
])
def test_rows_no_run_writes_are_refused(cells, message):
    with pytest.raises(RowError, match=re.escape(message)):
        RULES.check(cells)
