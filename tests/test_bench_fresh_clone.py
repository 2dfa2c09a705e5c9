"""The bench scripts on a fresh clone (issue 22): the recorded votes (SETTING_certify.npz) are
not committed, so `table` prints the committed runs without the bound lines that need them and
`replay_radii.py` says how to record them, instead of a traceback."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
pytestmark = pytest.mark.skipif(not (BENCH / "radii_runs" / "dual_run.json").is_file(),
                                reason="bench/radii_runs not present")


@pytest.fixture()
def runs_without_votes(tmp_path):
    for path in (BENCH / "radii_runs").glob("*_run.json"):
        shutil.copy(path, tmp_path)
    return tmp_path


def test_table_prints_every_committed_run_without_recorded_votes(runs_without_votes, capsys):
    import radii_vs_certify
    radii_vs_certify.main(["table", "--dir", str(runs_without_votes)])
    out = capsys.readouterr().out
    assert "embedded Dual RS" in out and out.count("largest certified-accuracy difference") == 4


def test_replay_without_recorded_votes_names_the_command_that_records_them(runs_without_votes):
    import replay_radii
    with pytest.raises(SystemExit, match=r"no recorded votes .*/radii_vs_certify\.py certify "
                                         r"--setting 0.25 --start 0 --num 200"):
        replay_radii.main(["--setting", "0.25", "--dir", str(runs_without_votes)])


def test_replay_radii_runs_without_radii_vs_certify():
    """The two scripts share bench/radii_grid.py; replay_radii imports nothing of the
    script that records the votes (no import circle)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import replay_radii; "
            "print('radii_vs_certify' in sys.modules)")
    out = subprocess.run([sys.executable, "-P", "-c", code, str(BENCH)], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"
