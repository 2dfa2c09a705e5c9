"""Shared by the Dual RS tests: the alpha share each input's R_ve bound must have used."""
import numpy as np

from dualrs_fast.estimator_rounds import checkpoint_alphas, target_schedule


def expected_estimator_alpha(r, dual, alpha: float, rounds: int) -> np.ndarray:
    """Per input, the share of alpha_ve at the checkpoint where its estimator stopped: all of
    alpha_ve where its votes shared the classifier's pass or the procedure is plain, else
    checkpoint k of its schedule planned from R_cls (``target_schedule``) at
    alpha_ve * 2^k / (2^K - 1); 0 where it drew nothing."""
    alpha_ve, _ = dual.alphas(alpha)
    out = np.zeros(len(r))
    for i, drawn in enumerate(r.estimator_samples.tolist()):
        if drawn == 0:
            continue
        if rounds == 1 or bool(r.shared[i]):
            assert drawn == r.n_estimator
            out[i] = alpha_ve
            continue
        schedule = target_schedule(float(r.radius_classifier[i]), r.n_estimator, rounds,
                                   alpha_ve, dual.estimator_sigma)
        out[i] = checkpoint_alphas(alpha_ve, len(schedule))[schedule.index(drawn)]
    return out
