"""The SDE kinds by name, and `make_sde`, which builds one from a config mapping (e.g. configs/sde/*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping

from .base import SDE
from .subvp import SubVPSDE
from .ve import VESDE
from .vp import VPSDE

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def make_sde(config: Mapping) -> SDE:
    """The SDE of `config`: `kind` (vp | subvp | ve; default vp) and that kind's constructor arguments.

        vp     schedule (linear | cosine | geometric), beta_min, beta_max, sigma2_min, sigma2_max, cosine_s,
               cosine_logsnr_end, sigma2_0                                          (`VPSDE`)
        subvp  the same but sigma2_0                                                 (`SubVPSDE`)
        ve     sigma_min, sigma_max                                                  (`VESDE`)

    Only SDE keys: the model's and trainer's keys of an `sde` config group (`discrete_steps`, `t_eps`) must be
    removed first; an unknown key raises ValueError naming it.
    """
    arguments = dict(config)
    kind = arguments.pop("kind", "vp")
    if kind not in SDES:
        raise ValueError(f"unknown SDE kind {kind!r}; valid: {', '.join(SDES)}")
    try:
        return SDES[kind](**arguments)
    except TypeError as error:  # an argument the constructor does not take
        raise ValueError(f"bad arguments {sorted(arguments)} for the {kind} SDE ({error}); make_sde takes only the "
                         "SDE's own keys: remove model/trainer keys such as discrete_steps and t_eps") from None
