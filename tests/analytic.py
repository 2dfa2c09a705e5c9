"""Analytic test cases: classifiers whose smoothed robustness radius is known exactly."""
import torch


class LinearBinary(torch.nn.Module):
    """f(x) = 1[w.x + b > 0]. Its Gaussian smoothing has a closed form: P(f(x+e)=1) =
    Phi((w.x+b) / (sigma |w|)), so the smoothed classifier's exact l2 robustness radius at x
    is the distance |w.x+b| / |w| to the hyperplane."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = torch.nn.Parameter(w.reshape(-1).clone(), requires_grad=False)
        self.b = float(b)

    @classmethod
    def random(cls, dim: int, seed: int, b: float = 0.0) -> "LinearBinary":
        """A hyperplane with N(0, I) normal drawn from a fresh generator seeded ``seed``."""
        return cls(torch.randn(dim, generator=torch.Generator().manual_seed(seed)), b=b)

    def forward(self, x):
        z = x.reshape(x.shape[0], -1) @ self.w.to(x.dtype) + self.b
        return torch.stack([-z, z], dim=1)

    def signed_distance(self, x):
        return (x.reshape(x.shape[0], -1).double() @ self.w.double() + self.b) / self.w.double().norm()


def inputs_at_distances(model: LinearBinary, distances, shape, seed=0):
    """Inputs whose signed distance to the model's hyperplane is exactly `distances`."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((len(distances),) + tuple(shape), generator=g, dtype=torch.float64)
    w = model.w.double()
    unit = w / w.norm()
    d0 = model.signed_distance(base)
    flat = base.reshape(len(distances), -1) + (torch.as_tensor(distances, dtype=torch.float64) - d0)[:, None] * unit
    return flat.reshape(base.shape).float()


def inputs_at_distances_to(models, distances, dim, seed=0):
    """float32 inputs (N, dim) whose signed distances to the hyperplanes of ``models`` are
    ``distances`` (N, len(models)) (up to float32 rounding; the hyperplanes must be
    linearly independent)."""
    distances = torch.as_tensor(distances, dtype=torch.float64)
    base = torch.rand(distances.shape[0], dim, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)
    normals = torch.stack([m.w.double() / m.w.double().norm() for m in models])
    now = torch.stack([m.signed_distance(base) for m in models], 1)
    coef = torch.linalg.solve(normals @ normals.T, (distances - now).T).T
    return (base + coef @ normals).float()
