"""One smoother interface: StandardSmoothing, DualSmoothing and CascadeSmoothing present the
same methods, drs.certify / predict / certify_radii dispatch to them, the runner holds any of
them (the cascade included, which no CLI flag builds), and smoothing.py and
sequential_radii.py import neither dual nor cascade."""
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast import runner
from dualrs_fast.loading import Dataset
from dualrs_fast.logs import COLUMNS

from analytic import LinearBinary

D = 16
SIGMAS = (0.25, 0.5)
GRID = (0.0, 0.1, 0.25, 0.5)
QUICK = dict(n0=20, n=200, alpha=0.01, batch_size=64, seed=3)


def _experts():
    return {s: LinearBinary.random(D, 20 + k, b=0.1 * (k + 1)) for k, s in enumerate(SIGMAS)}


def _smoothers():
    torch.manual_seed(0)
    estimator = torch.nn.Linear(D, len(SIGMAS)).eval()  # logits over the levels
    return [drs.StandardSmoothing(LinearBinary.random(D, 1, b=0.2), 0.5),
            drs.DualSmoothing(estimator, _experts(), sigmas=SIGMAS),
            drs.CascadeSmoothing(_experts(), sigmas=SIGMAS)]


def _x(batch=5, seed=0):
    return torch.rand(batch, D, generator=torch.Generator().manual_seed(seed))


INTERFACE = ("certify", "predict", "certify_radii", "log_columns", "log_cells", "row_rules",
             "output_classes", "samples_per_input", "predict_samples_per_input")


def _shared_parameters(method):
    """(name, kind, default) of each parameter, up to the smoother's own extra options."""
    own = {"n0_estimator", "n_estimator", "estimator_rounds", "share_pass", "share_noise",
           "estimator_futility_alpha", "estimator_class_share", "estimator_slack"}
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()
            if p.name not in own]


@pytest.mark.parametrize("name", ["certify", "predict", "certify_radii"])
def test_the_three_smoothers_share_the_api_methods(name):
    standard, dual, cascade = _smoothers()
    assert all(hasattr(s, attribute) for s in (standard, dual, cascade) for attribute in INTERFACE)
    expected = _shared_parameters(getattr(standard, name))
    assert _shared_parameters(getattr(dual, name)) == expected
    assert _shared_parameters(getattr(cascade, name)) == expected


def test_standard_smoothing_is_drs_certify_of_its_model():
    model, x = LinearBinary.random(D, 1, b=0.2), _x()
    smoother = drs.StandardSmoothing(model, 0.5)
    a, b = smoother.certify(x, **QUICK), drs.certify(model, x, 0.5, **QUICK)
    for field in ("prediction", "radius", "count", "p_lower", "sigma"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert torch.equal(drs.certify(smoother, x, **QUICK).radius, b.radius)
    kw = dict(n=200, alpha=0.01, seed=3)
    assert torch.equal(smoother.predict(x, **kw), drs.predict(model, x, 0.5, **kw))
    assert torch.equal(drs.predict(smoother, x, **kw), drs.predict(model, x, 0.5, **kw))
    kw = dict(n_max=400, n0=20, alpha=0.01, seed=3)
    r, expected = smoother.certify_radii(x, GRID, **kw), drs.certify_radii(model, x, GRID, 0.5,
                                                                           **kw)
    assert torch.equal(r.radius, expected.radius) and torch.equal(r.samples, expected.samples)
    assert torch.equal(drs.certify_radii(smoother, x, GRID, **kw).radius, expected.radius)
    # its sigma and engine options are its own: given again, they are refused
    for option in (dict(sigma=0.5), dict(num_classes=2), dict(compile=True)):
        with pytest.raises(TypeError, match="StandardSmoothing model"):
            drs.certify(smoother, x, **option, **QUICK)
        with pytest.raises(TypeError, match="StandardSmoothing model"):
            drs.certify_radii(smoother, x, GRID, **option)
    with pytest.raises(TypeError, match="callable"):
        drs.StandardSmoothing("model", 0.5)
    with pytest.raises(ValueError):
        drs.StandardSmoothing(model, -1.0)


def test_cascade_certify_radii_is_certify_rounded_down_to_the_grid():
    cascade, x = _smoothers()[2], _x(12)
    r = cascade.certify_radii(x, GRID, n_max=400, n0=20, alpha=0.01, seed=3)
    c = cascade.certify(x, n0=20, n=400, alpha=0.01, seed=3)
    grid = np.asarray(GRID)
    expected = np.array([grid[grid <= radius].max() if p >= 0 else 0.0
                         for p, radius in zip(c.prediction.tolist(), c.radius.tolist())])
    np.testing.assert_array_equal(r.radius.numpy(), expected)
    assert torch.equal(r.prediction, c.prediction) and torch.equal(r.samples, c.samples)
    assert r.certified[:, 0].tolist() == (c.prediction >= 0).tolist()
    assert torch.equal(drs.certify_radii(cascade, x, GRID, n_max=400, n0=20, alpha=0.01,
                                         seed=3).radius, r.radius)


def test_dual_certify_radii_method_is_drs_certify_radii():
    dual, x = _smoothers()[1], _x()
    kw = dict(n_max=400, n0=20, alpha=0.01, seed=3)
    a = dual.certify_radii(x, GRID, n0_estimator=30, n_estimator=300, **kw)
    b = drs.certify_radii(dual, x, GRID, n0_estimator=30, n_max_estimator=300, **kw)
    for field in ("prediction", "radius", "samples", "radius_estimator", "radius_classifier"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    with pytest.raises(ValueError, match="n_max_estimator"):
        drs.certify_radii(dual, x, GRID, n_max_estimator=0, **kw)


@pytest.mark.parametrize("kind", ["standard", "dual", "cascade"])
def test_the_runner_logs_and_resumes_any_smoother(tmp_path, kind):
    smoother = dict(zip(["standard", "dual", "cascade"], _smoothers()))[kind]
    data = Dataset("toy", _x(6, seed=1), torch.tensor([0, 1, 1, 0, 1, 0]))
    task = runner.certify_task(smoother, data, list(range(6)), config={"kind": kind}, **QUICK)
    assert task.columns == COLUMNS + smoother.log_columns
    rows = runner.run(task, tmp_path / "log.tsv", chunk=4, progress=False)
    r = smoother.certify(data.x, ids=list(range(6)), **QUICK)
    assert [int(rows[i].split("\t")[2]) for i in range(6)] == r.prediction.tolist()
    # a resume checks every row with the smoother's row rules, and recomputes none
    again = runner.certify_task(smoother, data, list(range(6)), config={"kind": kind}, **QUICK)
    assert runner.run(again, tmp_path / "log.tsv", progress=False) == rows
    assert again.resumed == 6
    radii = runner.certify_radii_task(smoother, data, list(range(6)), radii=GRID,
                                      config={"kind": kind}, **QUICK)
    assert radii.columns[-1] == "samples"
    runner.run(radii, tmp_path / "radii.tsv", progress=False)


IMPORTS = """
import importlib.util, json, sys, types
spec = importlib.util.find_spec("dualrs_fast")
face = types.ModuleType("dualrs_fast")  # the package without its face (__init__)
face.__path__ = list(spec.submodule_search_locations)
sys.modules["dualrs_fast"] = face
import dualrs_fast.smoothing, dualrs_fast.sequential_radii
low = sorted(m for m in sys.modules if m.startswith("dualrs_fast."))
import dualrs_fast.cascade
print(json.dumps([low, sorted(m for m in sys.modules if m.startswith("dualrs_fast."))]))
"""


def test_smoothing_imports_neither_dual_nor_cascade():
    """The dispatch sits above them (smoothers.py): imports go one way, no circle. (-P: the
    installed package, not a checkout in the working directory.)"""
    out = subprocess.run([sys.executable, "-P", "-c", IMPORTS], capture_output=True, text=True,
                         check=True).stdout
    low, with_cascade = json.loads(out)
    assert "dualrs_fast.smoothing" in low
    for module in ("dual", "cascade", "smoothers"):
        assert f"dualrs_fast.{module}" not in low
    assert "dualrs_fast.dual" in with_cascade and "dualrs_fast.smoothers" not in with_cascade


def test_a_smoother_given_to_the_plain_model_functions_is_refused_clearly():
    from dualrs_fast import sequential_radii, smoothing
    cascade, x = _smoothers()[2], _x(2)
    for call in (lambda: smoothing.certify(cascade, x, n0=5, n=10),
                 lambda: smoothing.predict(cascade, x, n=10),
                 lambda: sequential_radii.certify_radii(cascade, x, GRID, n_max=10)):
        with pytest.raises(TypeError, match="drs.certify"):
            call()
