"""The batch-invariance check shared by the Dual RS and cascade tests: noise is keyed by
(seed, id, stream, j), never by batch position or batch size."""
from types import SimpleNamespace

import torch


def assert_batch_invariant(model, x, ids, subset, certify_kw, same_results, predict_n):
    """``model.certify`` at batch_size 7 and 1000 gives the same results field by field
    (``same_results``), an input certified in ``subset`` alone (keyed by its id) gets the full
    batch's result, and so does ``model.predict``. Returns the batch_size-1000 result."""
    small = model.certify(x, batch_size=7, **certify_kw)
    large = model.certify(x, batch_size=1000, **certify_kw)
    same_results(small, large)
    part = model.certify(x[subset], batch_size=1000, **{**certify_kw, "ids": ids[subset]})
    full = SimpleNamespace(**{k: (v[subset] if isinstance(v, torch.Tensor) else v)
                              for k, v in vars(large).items()})
    same_results(part, full)
    p_full = model.predict(x, n=predict_n, alpha=0.1, seed=2, ids=ids, batch_size=7)
    p_part = model.predict(x[subset], n=predict_n, alpha=0.1, seed=2, ids=ids[subset])
    assert torch.equal(p_full[subset], p_part)
    return large
