"""One-shot diffusion denoising (Carlini et al. 2023) as a Dual RS denoiser.

For pixels x in [0,1] smoothed with noise sigma: in the DDPM's [-1,1] data scale the noise is
2*sigma, so pick the timestep t whose noise-to-signal ratio sqrt((1-abar_t)/abar_t) is
closest to 2*sigma, scale x_t = sqrt(abar_t) * (2 x_noisy - 1) (exactly the DDPM marginal
when the ratio matches), predict the noise once, and return the x0 estimate in [0,1].
"""
import torch


class OneShotDiffusionDenoiser(torch.nn.Module):
    """denoiser(x_noisy, sigma) -> x0 estimate, for a DDPM noise-prediction network
    ``eps_model(x_t, t)`` and its ``alphas_cumprod`` schedule (abar_t, decreasing in t)."""

    def __init__(self, eps_model, alphas_cumprod):
        super().__init__()
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
        if abar.numel() == 0 or not torch.all((abar > 0) & (abar < 1)):
            raise ValueError("alphas_cumprod must be a non-empty sequence of values in (0, 1)")
        if torch.any(abar[1:] > abar[:-1]):
            raise ValueError("alphas_cumprod must be non-increasing in t")
        self.eps_model = eps_model
        self.register_buffer("alphas_cumprod", abar)
        self.register_buffer("noise_ratio", torch.sqrt((1 - abar) / abar))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """t with sqrt((1-abar_t)/abar_t) nearest to 2*sigma, per row."""
        target = 2 * sigma.to(torch.float64).reshape(-1, 1)
        return (self.noise_ratio.reshape(1, -1) - target).abs().argmin(dim=1)

    def forward(self, x_noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = self.timestep(sigma.to(x_noisy.device))
        abar = self.alphas_cumprod[t].to(x_noisy.dtype).reshape((-1,) + (1,) * (x_noisy.dim() - 1))
        x_t = abar.sqrt() * (2 * x_noisy - 1)
        eps = self.eps_model(x_t, t)
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        return (x0.clamp(-1, 1) + 1) / 2
