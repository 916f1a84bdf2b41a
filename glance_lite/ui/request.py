"""The Generate fields of the page -> a checked `GenerationRequest`: load and generate arguments, PNG settings.

Checked here, before anything is queued or loaded: the prompt, the size (`checks.check_size`, the CLI's own check),
the step split (`PhaseSplit.parse`), the numbers and the LoRA choice. Everything that needs the model (LoRA files
against the architecture, the profile) is checked by `glance_lite.load` on the worker, still before any weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checks import check_size
from ..schedule import PhaseSplit

# Sampler choices on the page -> what they run (the few-step one needs its LoRA file: the page offers it once given,
# or for a model that ships its own, `pocket.bundled_fewstep_lora`).
GLANCE_SAMPLER, BASE_SAMPLER, FEWSTEP_SAMPLER = "Glance (slow + fast)", "Base model, N steps", "Few-step LoRA (file below), N steps"
SAMPLERS = {GLANCE_SAMPLER: "glance", BASE_SAMPLER: "base", "Custom split and mode": "custom", FEWSTEP_SAMPLER: "fewstep"}
# Compare's default: Glance against the base model, the comparison the method is about.
COMPARE_DEFAULT = (GLANCE_SAMPLER, BASE_SAMPLER)
FEWSTEP_STEPS_DEFAULT = 8  # Qwen-Image-Lightning's; a model that ships its own few-step LoRAs says its own (library)
# LoRA choices: the defaults of `load()` (the official Glance LoRAs for an official base), none, uploaded files,
# or a run trained on the Train tab (RUN_PREFIX + its name).
ADAPTERS_DEFAULT, ADAPTERS_NONE, ADAPTERS_UPLOADED, RUN_PREFIX = "default", "none", "uploaded", "run:"
# The Generate fields, by the names `app.py` gives their components (the handlers get them as one dict).
FIELDS = (
    "prompt", "negative_prompt", "height", "width", "seed", "model", "profile", "sampler", "base_steps",
    "slow_steps", "fast_steps", "mode", "true_cfg_scale", "adapters", "slow_file", "fast_file", "lora_compat", "image",
    "fewstep_file", "fewstep_steps", "compare_left", "compare_right",
)  # fmt: skip


def _integer(name: str, value, minimum: int | None = None) -> int:
    if value is None or value == "":
        raise ValueError(f"{name} is empty: enter a whole number.")
    number = float(value)
    if number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value}.")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {int(number)}.")
    return int(number)


def _cfg_scale(text) -> float | None:
    text = str(text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"True CFG scale must be a number (or empty for the model's default), got {text!r}.") from None


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str
    height: int
    width: int
    seed: int
    model: str
    profile: str
    sampler: str  # glance | base | custom | fewstep
    base_steps: int
    split: PhaseSplit | None  # None: the family's default split
    mode: str
    true_cfg_scale: float | None  # None: the family's default
    slow_lora: str | None
    fast_lora: str | None
    use_official_loras: bool
    lora_compat: str
    image: str | None  # input image of edit models
    fewstep_lora: str | None = None  # the few-step LoRA file (Qwen-Image-Lightning or one trained like it)
    fewstep_steps: int = FEWSTEP_STEPS_DEFAULT
    compare: tuple[str, str] = ("glance", "base")  # the two samplers Compare renders, left and right

    @classmethod
    def from_page(cls, fields: dict, runs_folder: Path) -> "GenerationRequest":
        """Check the page's values (keyed by FIELDS); raises ValueError with the sentence the page shows."""
        prompt = (fields["prompt"] or "").strip()
        if not prompt:
            raise ValueError("The prompt is empty: describe the image you want, e.g. 'a red circle on a blue background, top left'.")
        height, width = _integer("height", fields["height"]), _integer("width", fields["width"])
        check_size(height, width)
        sampler = _sampler(fields["sampler"])
        compare = (_sampler(fields.get("compare_left") or COMPARE_DEFAULT[0]), _sampler(fields.get("compare_right") or COMPARE_DEFAULT[1]))
        fewstep_steps = _integer("few-step steps", fields.get("fewstep_steps") or FEWSTEP_STEPS_DEFAULT, 1)
        fewstep = fields.get("fewstep_file") or None
        if "fewstep" in (sampler, *compare) and not fewstep:
            fewstep = _bundled_fewstep(fields["model"], fewstep_steps)
        custom = "custom" in (sampler, *compare)  # the split and mode of whichever side runs the custom sampler
        split = PhaseSplit.parse(fields["slow_steps"] or "", fields["fast_steps"] or "") if custom else None
        scale = _cfg_scale(fields["true_cfg_scale"])
        slow, fast, official = _adapters(fields, runs_folder)
        model = (fields["model"] or "").strip()
        if not model:
            raise ValueError("No model chosen: pick an embedded model, or type a local folder or a hub id.")
        return cls(
            prompt, fields["negative_prompt"] or " ", height, width, _integer("seed", fields["seed"], 0), model,
            fields["profile"] or "auto", sampler, _integer("base steps", fields["base_steps"], 1), split,
            fields["mode"] if custom else "consistent", scale,
            slow, fast, official, fields["lora_compat"], fields["image"] or None,
            fewstep, fewstep_steps, compare,
        )  # fmt: skip

    def load_key(self, profile_name: str) -> tuple:
        """What decides the loaded model: the same key reuses it (a retrained file has a new size or time)."""
        paths = (self.slow_lora, self.fast_lora, self.fewstep_lora)
        files = tuple((p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) if p and Path(p).is_file() else p for p in paths)
        return (self.model, profile_name, files, self.use_official_loras, self.lora_compat)

    def method(self, sampler: str | None = None) -> str:
        """The `glance_lite.methods` name a sampler choice runs (default: the Generate tab's)."""
        sampler = sampler or self.sampler
        return {"glance": "glance", "custom": "glance", "base": f"base-{self.base_steps}", "fewstep": f"fewstep-{self.fewstep_steps}"}[sampler]

    def generate_kwargs(self, sampler: str | None = None) -> dict:
        """Keyword arguments of `Glance.generate` for a sampler choice (default: the Generate tab's)."""
        custom = (sampler or self.sampler) == "custom"
        return dict(
            negative_prompt=self.negative_prompt, height=self.height, width=self.width, seed=self.seed,
            true_cfg_scale=self.true_cfg_scale, mode=self.mode if custom else "consistent", split=self.split if custom else None,
            method=self.method(sampler), image=self.image,
        )  # fmt: skip


def _bundled_fewstep(model: str, steps: int) -> str:
    """The few-step LoRA the model ships for `steps` (the pocket model's distilled ones), else the sentence to show."""
    from ..pocket import bundled_fewstep_lora, shipped_fewstep_note

    model = (model or "").strip()
    path = bundled_fewstep_lora(model, steps)
    if path is not None:
        return str(path)
    raise ValueError("The few-step sampler runs a few-step LoRA: upload its .safetensors file (e.g. a Qwen-Image-Lightning file) "
                     f"under 'Few-step LoRA file'{shipped_fewstep_note(model)}.")  # fmt: skip


def _sampler(label: str) -> str:
    sampler = SAMPLERS.get(label, label)
    if sampler not in SAMPLERS.values():
        raise ValueError(f"Unknown sampler {label!r}: choose one of {', '.join(SAMPLERS)}.")
    return sampler


def _adapters(fields: dict, runs_folder: Path) -> tuple[str | None, str | None, bool]:
    """(slow LoRA, fast LoRA, use the official ones) for the page's LoRA choice."""
    choice = fields["adapters"] or ADAPTERS_DEFAULT
    if choice == ADAPTERS_DEFAULT:
        return None, None, True
    if choice == ADAPTERS_NONE:
        return None, None, False
    if choice == ADAPTERS_UPLOADED:
        slow, fast = fields["slow_file"] or None, fields["fast_file"] or None
        if not (slow or fast):
            raise ValueError("'Uploaded files' is chosen but no LoRA file was uploaded: add a slow and/or a fast .safetensors file.")
        return slow, fast, False
    if choice.startswith(RUN_PREFIX):
        from .training import trained_run

        adapters = {phase: str(path) for phase, path in trained_run(runs_folder, choice.removeprefix(RUN_PREFIX)).adapters.items()}
        return adapters.get("slow"), adapters.get("fast"), False
    raise ValueError(f"Unknown LoRA choice {choice!r}.")
