"""`python -m glance_lite.generate`: sample images with Glance, the plain base model or a few-step LoRA.

    python -m glance_lite.generate --model tiny/qwen-image --prompt "a red cube" --height 128 --width 128 --out a.png
    python -m glance_lite.generate --model Qwen/Qwen-Image --prompt "..." --profile 4090 --out a.png
    python -m glance_lite.generate --model Qwen/Qwen-Image --prompt "..." --base-steps 50 --out base.png
    python -m glance_lite.generate --model Qwen/Qwen-Image --prompt "..." --method lightning-8 --out l8.png
    python -m glance_lite.generate --model tiny/qwen-image --prompt "..." --method fewstep --lora my.safetensors --steps 8 --out f.png
    accelerate launch -m glance_lite.generate --prompts-file prompts.txt --out-dir out/   # one process per GPU

    python -m glance_lite.generate --from-png a.png --out again.png    # the same image again, from its settings

Several prompts (repeated --prompt or --prompts-file) write out/000.png, 001.png, ... With `accelerate launch`
each process takes every N-th prompt, so N GPUs generate N images at a time.

Every PNG written carries how it was made (prompt, negative prompt, seed, size, model, LoRA files with their
sha256, split, mode, profile, guidance, noise source) in a `glance_lite` text chunk (`glance_lite.png_settings`);
`--from-png` reads it back, checks the LoRA and latents files are the same bytes, and generates again. Flags given
beside `--from-png` win over the PNG's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import _make_callable, cli


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m glance_lite.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny/qwen-image", help="hub id, local pipeline folder, or tiny/qwen-image | tiny/flux | tiny/qwen-image-edit")
    p.add_argument("--prompt", action="append", help="prompt (repeat for several)")
    p.add_argument("--prompts-file", type=Path, help="text file, one prompt per line")
    p.add_argument("--negative-prompt", default=" ")
    p.add_argument("--image", help="input image (Qwen-Image-Edit models)")
    p.add_argument("--slow-lora", help="Slow-LoRA: .safetensors file, folder, or hub repo id (with --slow-weight-name)")
    p.add_argument("--fast-lora", help="Fast-LoRA: .safetensors file, folder, or hub repo id (with --fast-weight-name)")
    p.add_argument("--slow-weight-name")
    p.add_argument("--fast-weight-name")
    p.add_argument("--no-official-loras", action="store_true", help="do not fetch the published Glance LoRAs for official base models")
    p.add_argument("--lora-compat", choices=("trained", "diffusers"), default="trained",
                   help="trained: every key at the trained scale; diffusers: load exactly as diffusers does (reproduces published images)")
    p.add_argument("--profile", default="auto", help="hardware profile name or YAML path (default: auto)")
    p.add_argument("--device", choices=("cpu",), help="run the profile's choices (quantization, residency, placement) on the CPU")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--true-cfg-scale", type=float, help="true CFG scale (default: the family's, 5 for Qwen-Image)")
    p.add_argument("--mode", choices=("consistent", "reference"), default="consistent", help="schedule mode (see README)")
    p.add_argument("--slow-steps", help="slow-phase indices into the 50-step schedule, e.g. 0,2,4,6,8")
    p.add_argument("--fast-steps", help="fast-phase indices, e.g. 10,20,30,40,49")
    p.add_argument("--method", default="glance",
                   help="sampling method: glance (default), base-N, fewstep-N (one few-step LoRA, --lora, no guidance), "
                        "lightning-8 / lightning-4 (Qwen-Image-Lightning's published file unless --lora)")  # fmt: skip
    p.add_argument("--steps", type=int, help="steps of --method base or fewstep (e.g. --method fewstep --steps 8)")
    p.add_argument("--lora", help="the few-step LoRA of --method fewstep-N / lightning-*: .safetensors file, folder, or hub repo id")
    p.add_argument("--lora-weight-name", help="file name of --lora in a folder or hub repo")
    p.add_argument("--scheduler", action="append", default=[], metavar="KEY=VALUE",
                   help="override a few-step method's scheduler setting (default: Qwen-Image-Lightning's), e.g. base_shift=1.0986")  # fmt: skip
    p.add_argument("--base-steps", type=int, help="run the plain base model for N steps instead of Glance (= --method base-N)")
    p.add_argument("--latents", type=Path, help="starting noise: a .pt / .safetensors tensor in the pipeline's packed layout")
    p.add_argument("--generator-device", choices=("cpu", "cuda"), default="cpu",
                   help="where the seeded noise is drawn: cpu (same on every machine) or cuda (as the official script; needs a GPU)")
    p.add_argument("--from-png", type=Path, help="generate again with the settings stored in a PNG this command wrote")
    p.add_argument("--out", type=Path, help="output PNG (single prompt)")
    p.add_argument("--out-dir", type=Path, help="output folder (several prompts)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist already (refused otherwise)")
    p.add_argument("--json", action="store_true", help="print timesteps, per-stage wall time, memory and LoRA reports as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def _prompts(args) -> list[str]:
    from .checks import check_prompts, read_prompts_file

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_prompts_file(args.prompts_file)
    if not prompts:
        raise cli.UsageError("give a prompt with --prompt TEXT (or --prompts-file FILE).")
    return check_prompts(prompts)


def _outputs(args, n: int) -> list[Path]:
    """The image files this run writes, checked before any model loads (see glance_lite.checks)."""
    from .checks import check_output_file, check_output_files

    if args.out and n > 1:
        raise cli.UsageError(f"{n} prompts need --out-dir DIR (one PNG each), not --out.")
    if args.out:
        return [check_output_file(args.out, "--out", args.overwrite)]
    folder = args.out_dir or Path(".")
    if folder.exists() and not folder.is_dir():
        raise cli.UsageError(f"--out-dir {folder} is a file; give a folder (it is created if missing).")
    return check_output_files([folder / f"{i:03d}.png" for i in range(n)], "--out-dir", args.overwrite)


def _method(args):
    """The sampling method the options name (--method, --steps, --base-steps, --scheduler, --lora), refused when they
    contradict each other."""
    from .methods import parse_method, parse_scheduler_options

    if args.base_steps is not None:
        if args.base_steps < 1:
            raise cli.UsageError(f"--base-steps {args.base_steps}: the base model needs at least 1 step (e.g. --base-steps 50).")
        if args.method != "glance" or args.steps is not None:
            raise cli.UsageError("--base-steps N is --method base-N: give one of them.")
        return parse_method(f"base-{args.base_steps}")
    method = parse_method(args.method, args.steps, parse_scheduler_options(args.scheduler))
    if args.lora is not None and method.kind != "fewstep":
        raise cli.UsageError(f"--lora is the few-step LoRA of --method fewstep-N / lightning-*; {method.name} uses "
                             "--slow-lora / --fast-lora (glance) or none (base).")  # fmt: skip
    if method.kind == "fewstep" and not method.preset and args.lora is None:
        from .pocket import bundled_fewstep_lora, shipped_fewstep_note

        if bundled_fewstep_lora(args.model, method.steps) is None:
            note = shipped_fewstep_note(args.model) or " (or use --method lightning-8)"
            raise cli.UsageError(f"{method.name} samples with a few-step LoRA: pass it with --lora FILE{note}.")
    if method.kind != "glance" and (args.slow_steps or args.fast_steps):
        raise cli.UsageError(f"--slow-steps / --fast-steps split the glance method; {method.name} takes --steps.")
    return method


def _check_before_loading(args):
    """What can be refused without a model (size, steps, guidance, LoRA files, input image); the split and method."""
    import math

    from .checks import check_size
    from .lora import LoraSource, check_lora_file_header
    from .schedule import PhaseSplit

    check_size(args.height, args.width)
    split = PhaseSplit.parse(args.slow_steps, args.fast_steps) if (args.slow_steps or args.fast_steps) else None
    method = _method(args)
    if args.true_cfg_scale is not None and not math.isfinite(args.true_cfg_scale):
        raise cli.UsageError(f"--true-cfg-scale {args.true_cfg_scale}: give a finite number (1 turns true CFG off).")
    for lora, weight_name in ((args.slow_lora, args.slow_weight_name), (args.fast_lora, args.fast_weight_name), (args.lora, args.lora_weight_name)):
        if lora is not None:
            check_lora_file_header(LoraSource(lora, weight_name).resolve())
    if args.image is not None:
        from .data import check_image_file

        check_image_file(args.image, "--image")
    if args.latents is not None:
        from .errors import existing_file

        existing_file(args.latents, "--latents")
    from .models import family_of

    family = family_of(args.model)
    if family.needs_condition_image and args.image is None:
        raise cli.UsageError(f"{args.model} is an image-editing model: pass the input image with --image PATH.")
    if args.image is not None and not family.needs_condition_image:
        raise cli.UsageError(f"--image is the input image of an image-editing model; {args.model} is a {family.name} model.")
    return split, method


def _process_share(items: list) -> list[tuple[int, object]]:
    """Data parallel under `accelerate launch`: process r of N takes items r, r+N, ... (all items otherwise)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return [(i, x) for i, x in enumerate(items) if i % world == rank]


# ---- what an image remembers ------------------------------------------------------------------------------------
# Settings stored in the PNG that map one to one onto a command-line option.
_PNG_OPTIONS = ("negative_prompt", "seed", "height", "width", "model", "profile", "device", "mode", "method",
                "true_cfg_scale", "lora_compat", "generator_device")  # fmt: skip
# The command-line option of each phase's LoRA a PNG records.
_LORA_OPTIONS = {"slow": "slow_lora", "fast": "fast_lora", "fewstep": "lora"}


def _apply_png_settings(args, parser) -> None:
    """Fill every option the user left at its default from the PNG's settings (flags given beside it win)."""
    from .errors import existing_file
    from .png_settings import read_png_settings

    settings = read_png_settings(existing_file(args.from_png, "--from-png"))
    if not settings:
        raise ValueError(f"{args.from_png} carries no glance_lite settings: only PNGs written by glance_lite can be regenerated.")
    if "prompt" not in settings:
        raise ValueError(f"{args.from_png} is a sheet of several pictures; regenerate one of its panels' PNGs instead.")
    if not args.prompt and not args.prompts_file:
        args.prompt = [settings["prompt"]]
    for key in _PNG_OPTIONS:
        if key in settings and getattr(args, key) == parser.get_default(key):
            setattr(args, key, settings[key])
    if "method" not in settings and settings.get("base_steps") and args.method == parser.get_default("method"):
        args.method = f"base-{settings['base_steps']}"  # a PNG written before methods had names
    loras = {entry["phase"]: entry for entry in settings.get("loras", [])}
    for phase, entry in loras.items():
        if getattr(args, _LORA_OPTIONS[phase]) is None:
            _same_bytes(entry, f"the {phase} LoRA")
            setattr(args, _LORA_OPTIONS[phase], entry["name"])
    if not loras and args.slow_lora is None and args.fast_lora is None:
        args.no_official_loras = True  # it was made without LoRAs
    split = settings.get("split")
    if split and args.slow_steps is None and args.fast_steps is None:
        args.slow_steps, args.fast_steps = (",".join(map(str, split[p])) for p in ("slow", "fast"))
    for key in ("latents", "image"):
        if isinstance(settings.get(key), dict) and getattr(args, key) is None:
            _same_bytes(settings[key], f"the {key} file")
            setattr(args, key, Path(settings[key]["name"]))


def _same_bytes(entry: dict, what: str) -> None:
    """A file the PNG names must be the very bytes that made it (or the image cannot be made again)."""
    from .data import file_digest

    path = Path(entry["name"])
    if not path.is_file():
        raise FileNotFoundError(f"{what} of that image, {path}, is gone: put it back or pass another with its option.")
    if file_digest(path) != entry["sha256"]:
        raise ValueError(f"{what} of that image, {path}, has changed since (sha256 differs): the image cannot be remade.")


@cli.command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .profiles import early_profile
    from .quiet import set_progress

    set_progress(not args.no_progress)
    cli.show_notes()
    if args.from_png:
        _apply_png_settings(args, parser)
    prompts = _prompts(args)
    split, method = _check_before_loading(args)
    profile = early_profile(args.profile)
    outputs = _outputs(args, len(prompts))

    from .api import file_entry, load, read_latents
    from .png_settings import save_png

    latents = read_latents(args.latents, len(prompts)) if args.latents else None
    glance = load(
        args.model, args.slow_lora, args.fast_lora,
        slow_weight_name=args.slow_weight_name, fast_weight_name=args.fast_weight_name,
        profile=profile, lora_compat=args.lora_compat, use_official_loras=not args.no_official_loras,
        split=split, height=args.height, width=args.width, device=args.device,
        method=method, fewstep_lora=args.lora, fewstep_weight_name=args.lora_weight_name,
    )  # fmt: skip
    mine = _process_share(list(zip(prompts, outputs)))
    latents_record = {"latents": file_entry(args.latents)} if args.latents else {}  # the file, hashed once
    reports = []
    for index, (prompt, out) in mine:
        result = glance.generate(
            prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
            seed=args.seed + index, true_cfg_scale=args.true_cfg_scale, mode=args.mode,
            method=method, image=args.image, progress=not args.no_progress,
            latents=None if latents is None else latents[index], generator_device=args.generator_device,
        )  # fmt: skip
        if not reports:
            for lora in result.lora_reports:
                print(lora.summary(), file=sys.stderr)
        settings = result.settings[0] | latents_record
        save_png(result.image, out, settings)
        reports.append({"prompt": prompt, "output": str(out), "seed": args.seed + index, **result.to_dict()})
        if not args.json:
            print(f"wrote {out}")
    if args.json:
        print(json.dumps({"model": args.model, "profile": glance.profile.name, "runs": reports}, indent=2))
    return 0


def _generate(*args, **kwargs):
    from .api import generate

    return generate(*args, **kwargs)


_make_callable(__name__, _generate)  # `glance_lite.generate(...)` keeps working once this module is imported

if __name__ == "__main__":
    sys.exit(main())
