"""Applications of a trained model: inpainting (RePaint) and interpolation (DDPM §4.4, or by the ODE).

    lsgm.apps.inpaint(model, x, mask, t_T=250, jump_length=10, jump_n_sample=10, seed=None)
    lsgm.apps.interpolate(model, x0, x1, t, lambdas, seed=None);  lsgm.apps.interpolate_ode(model, x0, x1, lambdas)
    lsgm.apps.repaint_schedule(t_T, jump_length, jump_n_sample);  lsgm.apps.masks.make_masks(kind, n, size, seed)

Commands: `python -m lsgm.apps.inpaint ckpt=PATH ...` and `python -m lsgm.apps.interpolate ckpt=PATH ...`.
Each command lives in the module of its function, and the functions are imported here by name, so `python -m`
finds its module already imported by this package; runpy's warning about that is silenced below (the module's
second execution, as __main__, only defines functions again).
"""

import warnings

warnings.filterwarnings("ignore", message=r"'lsgm\.apps\.(inpaint|interpolate)' found in sys\.modules",
                        category=RuntimeWarning)

from .inpaint import inpaint, repaint, repaint_schedule  # noqa: E402
from .interpolate import interpolate, interpolate_ode, slerp  # noqa: E402
from .masks import MASK_TYPES, make_masks  # noqa: E402

__all__ = ["MASK_TYPES", "inpaint", "interpolate", "interpolate_ode", "make_masks", "repaint", "repaint_schedule",
           "slerp"]
