"""Distribution distances in evaluator feature space: FLD and KID.

"FLD" here is the Fréchet distance between Gaussians fitted to this pipeline's own MNIST classifier's
128-d penultimate features (pipeline/instrument/evaluator.py, MnistCNN.features) of samples and of real
data: FID's formula with that network in place of Inception. Its values depend on the network, so they
are not comparable with published FIDs (Inception features) nor with Fréchet distances taken in another
MNIST classifier's features. It is not the Feature Likelihood Divergence (FLD) of Jiralerspong et al.
2023, a different metric with the same acronym. KID likewise uses these features."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from pipeline.common.errors import GanpipeError

# sqrtm of a product of two PSD matrices is real in exact arithmetic; rounding leaves a tiny imaginary part.
# Above this share of the real part's size the result cannot be trusted (pytorch-fid uses 1e-3 likewise).
IMAGINARY_TOLERANCE = 1e-3


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature matrix (N, d), in float64."""
    f = features.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2) between two Gaussians."""
    with warnings.catch_warnings():
        # Small or collapsed sample sets have singular covariances; handled just below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        # A near-singular product (e.g. a collapsed sample set): regularise both covariances slightly.
        eps = 1e-6 * np.eye(len(cov1))
        covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    imaginary = float(np.abs(covmean.imag).max()) if np.iscomplexobj(covmean) else 0.0
    if imaginary > IMAGINARY_TOLERANCE * max(float(np.abs(covmean.real).max()), 1.0):
        raise GanpipeError(
            f"the Fréchet distance's matrix square root came out complex (imaginary part {imaginary:.3g}), so FLD "
            "would be meaningless. This happens when the sample features are degenerate (e.g. NaN-free but "
            "near-constant images, or far too few samples for a 128-d covariance); evaluate more samples, or "
            "check that the images are digits in [0, 1] or [0, 255]."
        )
    covmean = covmean.real
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean), 0.0))


def fld(features: np.ndarray, real_mu: np.ndarray, real_cov: np.ndarray) -> float:
    """FLD: the Fréchet distance of the samples' Gaussian to the real data's in the evaluator classifier's
    features (not Inception's FID, not the Feature Likelihood Divergence; see the module). 0 = identical fits only in
    the limit: like FID it is biased upwards at finite n (the sample covariance's noise adds about
    tr(C)/n-sized terms), so compare it with real images at the same n (the calibration's `fld`)."""
    mu, cov = gaussian(features)
    return frechet_distance(mu, cov, real_mu, real_cov)


def _poly_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3. Kernels in float32 (fast matmuls), sums in float64."""
    d = x.shape[1]
    k_xx = ((x @ x.T) / d + 1.0).pow_(3).double()
    k_yy = ((y @ y.T) / d + 1.0).pow_(3).double()
    k_xy = ((x @ y.T) / d + 1.0).pow_(3).double()
    m, n = len(x), len(y)
    return float(
        (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
        + (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
        - 2.0 * k_xy.mean()
    )


def feature_scale(real_features: np.ndarray) -> float:
    """The root mean square feature value of the real data: dividing by it puts real features at unit
    scale, where the kernel's a.b / d + 1 means what it does for Inception features (KID's setting)."""
    f = real_features.astype(np.float64)
    return float(np.sqrt((f * f).mean()))


def kid(
    features: np.ndarray, real_features: np.ndarray, *, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, sec. 3): the unbiased MMD^2 with the cubic
    polynomial kernel on features divided by the real data's RMS value, over random subsets.
    Returns (mean, std over subsets). Unbiased, so real-vs-real is ~0 (it can be slightly negative)."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(features), len(real_features))
    if size < 2:
        return float("nan"), float("nan")
    scale = feature_scale(real_features)
    x_all = torch.from_numpy(np.ascontiguousarray(features / scale, dtype=np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(real_features / scale, dtype=np.float32))
    values = [
        _poly_mmd2_unbiased(
            x_all[rng.choice(len(x_all), size, replace=False)], y_all[rng.choice(len(y_all), size, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))
