"""Helpers for tests that run the `dualrs` command in-process."""
from pathlib import Path

from dualrs_fast import cli


def dualrs(capsys, *argv):
    """Run `dualrs ARGV...`; -> (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(path):
    """Log rows without the time column."""
    lines = Path(path).read_text().splitlines()
    time_col = lines[0].split("\t").index("time")
    return [[c for k, c in enumerate(line.split("\t")) if k != time_col] for line in lines]
