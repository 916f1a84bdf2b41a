"""The UI's calls into glance_lite whose home may move, and what the page says when something fails.

The UI reaches the planner and the auto profile choice only through `choose_profile` and `memory_plan` below. A
planner that fails (a model whose configs it cannot read) means "plan unavailable" on the page, never a refused
generation.
Everything else is called where it is used: `api.load`, `Glance.generate`, `train.train`, `demo.psnr`.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

from ..cli import error_text, is_user_error

logger = logging.getLogger("glance_lite.ui")

DEFAULT_MODEL = "pocket/qwen-image"


def model_choices() -> list[str]:
    """Embedded models first (they work offline), then the official bases of every family."""
    from ..families import FAMILIES
    from ..pocket import POCKET_MODEL_IDS
    from ..tiny import TINY_MODEL_IDS

    official = [model for family in FAMILIES.values() for model in family.official_base_models]
    return [*POCKET_MODEL_IDS, *TINY_MODEL_IDS, *official]


def profile_choices() -> list[str]:
    from ..profiles import list_profiles

    return ["auto", *list_profiles()]


def default_size(model: str) -> int:
    """The side a model was made for: the pocket model draws 64x64, the random tiny ones are tested at 128."""
    if model.startswith("pocket/"):
        return 64
    return 128 if model.startswith("tiny/") else 1024


def fewstep_steps_default(model: str) -> int:
    """The few-step sampler's N: the most steps the model ships a distilled LoRA for, else Lightning's 8."""
    from ..pocket import bundled_fewstep_steps
    from .request import FEWSTEP_STEPS_DEFAULT

    shipped = bundled_fewstep_steps(model.strip())
    return max(shipped) if shipped else FEWSTEP_STEPS_DEFAULT


@dataclass(frozen=True)
class ProfileChoice:
    profile: object  # glance_lite.profiles.Profile
    why: str  # the sentence the page shows next to the profile


def choose_profile(name: str | None, model: str, height: int, width: int) -> ProfileChoice:
    """The profile named on the page, or for `auto` the one the selector picks, with its reason."""
    from ..autoselect import select_profile
    from ..profiles import load_profile

    if name in (None, "", "auto"):
        try:
            profile, why = select_profile(model, height, width)
        except Exception as exc:
            if not is_user_error(exc):
                raise
            raise ValueError(
                f"The auto profile needs the memory planner, which cannot plan {model} ({exc}). Choose a profile."
            ) from None
        return ProfileChoice(profile, f"auto chose '{profile.name}': {why}")
    profile = load_profile(name)
    return ProfileChoice(profile, f"'{profile.name}' as chosen: {profile.description}")


@dataclass(frozen=True)
class PlanOutcome:
    """A memory plan, or why there is none (`unavailable`), and the leaner profile when it does not fit."""

    plan: object | None = None  # glance_lite.plan.MemoryPlan
    unavailable: str | None = None
    leaner: str | None = None

    @property
    def refuses(self) -> bool:
        return self.plan is not None and not self.plan.fits


def memory_plan(model: str, profile, height: int, width: int) -> PlanOutcome:
    """The planner's prediction for generating `model` at this size with `profile`, before any weight loads."""
    try:
        from ..plan import plan

        prediction = plan(model, profile, height, width)
        leaner = None if prediction.fits else prediction.leaner_profile_hint()
    except Exception as exc:  # whatever the planner raises, generation goes on without it
        if not is_user_error(exc):
            logger.warning("The memory planner failed:\n%s", "".join(traceback.format_exception(exc)))
        return PlanOutcome(unavailable=str(exc) or type(exc).__name__)
    return PlanOutcome(prediction, None, leaner)


def describe_error(exc: BaseException) -> str:
    """The one-line text the page shows for a failure: a user's mistake as the command lines word it
    (`glance_lite.cli`); unexpected ones also go to the server log with a traceback."""
    if is_user_error(exc):
        return error_text(exc).removeprefix("error: ")
    from safetensors import SafetensorError

    if isinstance(exc, SafetensorError):
        return f"A .safetensors file could not be read: it is corrupt or not a safetensors file ({exc})."
    logger.error("Unexpected error:\n%s", "".join(traceback.format_exception(exc)))
    return f"Unexpected error ({type(exc).__name__}: {exc}). The traceback is in the server log."
