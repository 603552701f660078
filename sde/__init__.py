"""VP-SDE / DDPM mathematics, samplers and likelihoods; knows nothing of networks.

A model is a callable `eps_fn(x, t) -> eps`; the score is −eps/σ_t.
"""

from .ddpm import DDPMSchedule
from .likelihood import (
    LogLikelihood,
    bits_per_dim,
    dequantize,
    ode_bits_per_dim,
    ode_decode,
    ode_encode,
    ode_log_likelihood,
)
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
from .vlb import RateDistortion, VariationalBound, discretized_gaussian_log_likelihood, normal_kl, variational_bound
from .vp import VPSDE, as_time, expand_like
from .weighting import SCHEMES, TimeSample, likelihood_weight, objective_weight, sample_time

__all__ = [
    "DDPMSchedule",
    "VPSDE",
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
