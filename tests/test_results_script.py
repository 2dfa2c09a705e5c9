"""scripts/results.py --rows dual: the Dual RS rows and R_ve tables of a committed table are
replaced and every other line is kept; the figure's rows are parsed back from the table."""
import types
from pathlib import Path

import pytest
import torch

from script_module import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT, TABLE = ROOT / "scripts" / "results.py", ROOT / "results" / "RESULTS.md"
pytestmark = pytest.mark.skipif(not (SCRIPT.is_file() and TABLE.is_file()),
                                reason="scripts/ or results/ not present")


@pytest.fixture(scope="module")
def results():
    return load_script("results")


def _dual_labels(text):
    return sorted({line.split("|")[1].strip() for line in text.split("\n")
                   if line.startswith("| Dual RS (")})


def test_splice_replaces_only_the_dual_rows(results):
    text = TABLE.read_text()
    labels = _dual_labels(text)
    assert labels
    new = {n: ([{"label": label, "acc": [0.5] * len(results.RADII), "mean": 0.123,
                 "seconds": 7.0, "levels": [1, 2, 3, 4]} for label in labels],
               [{"label": label, "ve": [0.1] * 5, "cls": [0.2] * 5, "capped": 0.3,
                 "uncapped_mean": 0.4} for label in labels]) for n in (2000, 10_000)}
    out = results.splice_dual_rows(text, new, {labels[0]: 1.11}, 2000)
    before, after = text.split("\n"), out.split("\n")
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    # every Dual RS line of both budgets' main and R_ve tables, nothing else
    assert len(changed) == 2 * 2 * len(labels)
    assert all(a.startswith("| Dual RS") and b.startswith("| Dual RS") for a, b in changed)
    main_2000 = out.split("### n = 10,000")[0]
    assert f"| {labels[0]} | " + " | ".join(["0.500"] * len(results.RADII)) \
        + " | 0.123 | 1 / 2 / 3 / 4 | 1.11 | 7 |" in main_2000
    assert "| 0.10 / 0.10 / 0.10 / 0.10 / 0.10 | 0.20 / 0.20 / 0.20 / 0.20 / 0.20 | 0.300 | " \
           "0.400 |" in out.split("### n = 10,000")[1]
    parsed = results.parse_rows(out)
    assert sorted(parsed) == [2000, 10_000]
    dual = [r for r in parsed[2000] if r["label"] == labels[0]][0]
    assert dual["acc"] == [0.5] * len(results.RADII)
    standard = [r for r in parsed[2000] if r["label"] == "standard σ=0.5"][0]
    assert standard == [r for r in results.parse_rows(text)[2000]
                        if r["label"] == "standard σ=0.5"][0]


def test_splice_refuses_a_budget_the_table_lacks(results):
    with pytest.raises(SystemExit, match="n = \\[500\\]"):
        results.splice_dual_rows(TABLE.read_text(), {500: ([], [])}, {}, 500)


@pytest.mark.parametrize("images,threads,message", [(20, 1, "does not cover the same images"),
                                                    (500, 2, "pass --threads 1")])
def test_rewrite_refuses_a_table_it_cannot_match(results, tmp_path, images, threads, message):
    # the committed mnist5k table covers test images 0..499, written with one torch thread
    table = tmp_path / "RESULTS.md"
    table.write_text(TABLE.read_text())
    args = types.SimpleNamespace(out=table, start=0, dataset="mnist5k", threads=threads)
    with pytest.raises(SystemExit, match=message):
        results.rewrite_dual_rows(args, torch.zeros(images, 1), None, None, {}, 0.0, None)
    assert table.read_text() == TABLE.read_text()
