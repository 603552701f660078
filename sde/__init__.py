"""Diffusion SDEs (VP, sub-VP, VE) and DDPM: mathematics, samplers and likelihoods; knows nothing of networks.

An SDE implements `sde.base.SDE` (marginal, drift, diffusion, log-SNR, prior); `make_sde(config)` builds one
by kind. A model is a callable `eps_fn(x, t) -> eps`; the score is −eps/σ_t. Continuous samplers take a time
grid (`sde.grids`); the solver plumbing they share with the likelihood is `sde.solvers`.
"""

from .base import SDE, Coefficients, as_time, expand_like
from .ddpm import DDPMSchedule
from .grids import edm_grid, log_snr_grid, quadratic_grid, uniform_grid
from .likelihood import (
    LogLikelihood,
    bits_per_dim,
    dequantize,
    ode_bits_per_dim,
    ode_decode,
    ode_encode,
    ode_log_likelihood,
)
from .registry import SDES, make_sde
from .sampling import (
    SAMPLERS,
    NonFiniteError,
    discrete_eps_fn,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpm2m,
    sample_heun,
    sample_ode,
    sample_pc,
    sample_sde,
)
from .schedules import CosineSchedule, GeometricSchedule, LinearSchedule
from .subvp import SubVPSDE
from .ve import VESDE
from .vlb import RateDistortion, VariationalBound, discretized_gaussian_log_likelihood, normal_kl, variational_bound
from .vp import VPSDE
from .weighting import SCHEMES, TimeSample, likelihood_weight, objective_weight, sample_time, supported_schemes

__all__ = [
    "SDE",
    "Coefficients",
    "SDES",
    "make_sde",
    "DDPMSchedule",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "uniform_grid",
    "quadratic_grid",
    "log_snr_grid",
    "edm_grid",
    "LinearSchedule",
    "CosineSchedule",
    "GeometricSchedule",
    "SCHEMES",
    "TimeSample",
    "as_time",
    "expand_like",
    "likelihood_weight",
    "objective_weight",
    "sample_time",
    "supported_schemes",
    "RateDistortion",
    "VariationalBound",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "variational_bound",
    "SAMPLERS",
    "NonFiniteError",
    "discrete_eps_fn",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm2m",
    "sample_heun",
    "sample_ode",
    "sample_pc",
    "sample_sde",
    "LogLikelihood",
    "bits_per_dim",
    "dequantize",
    "ode_bits_per_dim",
    "ode_decode",
    "ode_encode",
    "ode_log_likelihood",
]
