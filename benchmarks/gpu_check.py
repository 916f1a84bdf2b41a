"""The one-command GPU check: what a session lent a GPU runs first (issue #13), and what calibrates the planner.

    python benchmarks/gpu_check.py --out $OUT                                  # on the GPU: every GPU profile
    python benchmarks/gpu_check.py --device cpu --num-layers 2 --size 128      # the same code path on a CPU first

Full-size random-weight Qwen-Image (benchmarks/_common.py: built from the shipped configs with a small seeded
init, quantized and placed by the library's own manager, random rank-32 slow/fast LoRAs loaded from disk), for each
GPU profile in turn, capped to the profile's card with `torch.cuda.set_per_process_memory_fraction`:

- one Glance image (5 slow + 5 fast steps, true CFG) at --size, after one warm-up run: per-stage wall time and the
  allocator's peak next to the planner's prediction for that stage and the graph simulation's (`plan --simulate`:
  the planned peak with the simulated live bytes in place of the formula's); both predictions include the CUDA
  context, which `max_memory_allocated` does not see, so it is shown too;
- streamed == resident: the first profile that streams blocks is run again with every block resident (uncapped),
  same seed; max |latent difference| and PSNR of the two pictures (garbage from streams was diffusers#12673);
- one LoRA training step under the 4090 and 12gb caps (the profile's frozen-base storage, block streaming with the
  plan's resident blocks, gradient checkpointing, its optimizer), at --size with 1024 text tokens.

The text encoder is replaced by random prompt embeddings of the real shape (the text_encode stage measures nothing);
latencies are those of the card the check ran on, whatever the cap. multi-gpu needs two GPUs and is skipped on one.
Order: each profile's image, with the 4090 and 12gb training steps right after their images. Whatever would start
after --budget-s is skipped with the reason, and the tables are rewritten after every job, so they come back even
from a run cut short. Writes gpu-check.md and gpu-check.json to --out (default $OUT, else benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = "benchmarks/gpu_check.py"
GPU_PROFILES = ("4090", "12gb", "16gb", "8gb", "v100-16gb", "3090", "v100-32gb", "a100-80gb", "multi-gpu")
TRAIN_PROFILES = ("4090", "12gb")
PROMPT = "a red fox in the snow, photograph"
TRAIN_TEXT_TOKENS = 1024
GiB = C.GiB


def build_parser() -> argparse.ArgumentParser:
    p = C.cli.ArgumentParser(prog=f"python {SCRIPT}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", action="append", help=f"profiles to check (default: {', '.join(GPU_PROFILES)})")
    p.add_argument("--train-profile", action="append", help=f"profiles for the training step (default: {', '.join(TRAIN_PROFILES)})")
    p.add_argument("--size", type=int, default=1024, help="image height and width (default 1024)")
    p.add_argument("--num-layers", type=int, help="transformer blocks to build (default: all 60)")
    p.add_argument("--device", choices=("cpu",), help="run every profile's choices on the CPU (no caps, no streams)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=480, help="skip what is left after this many seconds")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    return p


# ==== one profile ===================================================================================================
def _cap(profile, device: torch.device) -> float | None:
    """Cap the caching allocator to the profile's card; returns the cap in GiB (None on a CPU or a smaller card)."""
    if device.type != "cuda":
        return None
    gb = min(profile.gpu_memory_gb, torch.cuda.get_device_properties(device).total_memory / GiB)
    C.set_vram_cap(gb, device)
    return gb


def _uncap(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _open(arch, profile, loras: dict, args):
    """A Glance on random weights through the library's own manager, LoRA loading and sampler."""
    from glance_lite.api import Glance
    from glance_lite.lora import LoraSource

    source = C.random_weight_source(arch, profile)
    manager = C.RandomWeightManager(source, profile, seed=args.seed, device=args.device)
    manager.image_size = (args.size, args.size)
    sources = {phase: LoraSource(str(path)) for phase, path in loras.items()}
    return Glance(source, profile, sources, "trained", source.family.default_split, manager=manager)


def _generate(glance, args):
    return glance.generate(PROMPT, height=args.size, width=args.size, seed=args.seed, output_type="pil", progress=False)


def _planned(arch, profile, args, simulate: bool = False):
    from glance_lite.plan import plan

    return plan(C.arch_configs(arch), profile, args.size, args.size, text_tokens=arch.prompt_tokens, device=args.device,
                simulate=simulate)  # fmt: skip


def _simulated_peak(mp, stage_name: str, device: str) -> int | None:
    """The planned peak with the graph simulation's live bytes in place of the formula's (`plan --simulate`)."""
    from glance_lite.plan.simulation import simulated_peak

    stage = mp.stages.get(stage_name)
    return None if stage is None or mp.simulation is None else simulated_peak(stage, mp.simulation, mp.activation_terms, device)


def check_profile(name: str, arch, loras: dict, args) -> dict:
    from glance_lite.profiles import load_profile

    profile = load_profile(name)
    mp = _planned(arch, profile, args, simulate=True)
    glance = _open(arch, profile, loras, args)
    device = glance.device
    cap = _cap(profile, device) if args.device is None else None
    try:
        _generate(glance, args)  # warm-up: kernel selection, lazy init, the streaming order traced
        start = time.perf_counter()
        result = _generate(glance, args)
        seconds = time.perf_counter() - start
    finally:
        _uncap(device)
    stages = {}
    for record in result.stages:
        plan_stage = {"denoise": "slow_phase"}.get(record.stage, record.stage)
        planned = mp.stages.get(plan_stage)
        on = str(device) if device.type == "cuda" else "cpu"
        stages[record.stage] = {
            "seconds": record.seconds,
            "measured_peak_bytes": record.peak_bytes,
            "measured_reserved_bytes": record.reserved_bytes,
            "planned_peak_bytes": planned.peak(on) if planned else None,
            "simulated_peak_bytes": _simulated_peak(mp, plan_stage, on),
            "planned_overhead_bytes": planned.overhead.get(on, 0) if planned else None,
        }
    out = {
        "profile": name, "cap_gib": cap, "seconds": seconds, "stages": stages,
        "resident_blocks": len(mp.resident_blocks.get("denoise", ())), "blocks": mp.components["transformer"].blocks,
        "planned_pcie_bytes_per_image": mp.pcie.per_image, "latents": result.latents[0].float().cpu(), "image": result.image,
        "streams": profile.component("transformer").placement == "group_offload",
    }  # fmt: skip
    del glance, result
    _free()
    return out


def streamed_equals_resident(run: dict, arch, loras: dict, args) -> dict:
    """The same profile with every block resident and no cap, same seed: how far the streamed picture is."""
    import dataclasses

    from glance_lite.demo import psnr
    from glance_lite.profiles import load_profile

    profile = load_profile(run["profile"])
    policy = dataclasses.replace(profile.component("transformer"), placement="resident", use_stream=False, blocks_per_group=None)
    resident = dataclasses.replace(profile, components={**dict(profile.components), "transformer": policy})
    glance = _open(arch, resident, loras, args)
    result = _generate(glance, args)
    difference = (result.latents[0].float().cpu() - run["latents"]).abs().max().item()
    out = {"profile": run["profile"], "max_abs_latent_difference": difference, "psnr_db": psnr(result.image, run["image"])}
    del glance, result
    _free()
    return out


def training_step(name: str, arch, args) -> dict:
    """One LoRA step as the trainer holds the base for this profile (storage, streaming, resident blocks, optimizer)."""
    from glance_lite.placement import placement
    from glance_lite.profiles import load_profile
    from glance_lite.quantize import torch_dtype
    from glance_lite.schedule import image_seq_len
    from glance_lite.train import _activate_adapter, _build_optimizer, add_training_adapters, hold_frozen_base
    from glance_lite.train_config import TrainConfig

    profile = load_profile(name)
    mp = _planned(arch, profile, args, simulate=True)
    where = placement(profile, "transformer", "train_step", device=args.device)
    device = torch.device(where.device)
    family = C.random_weight_source(arch, profile).family
    streamed, dtype = where.mode == "streamed", torch_dtype(where.dtype)
    transformer = C.materialize_(
        C.meta_module(arch, "transformer"), dtype=dtype, init_device=device,
        home_device=torch.device("cpu") if streamed else device, seed=args.seed, quantization=where.quantization,
    )  # fmt: skip
    add_training_adapters(transformer, family, family.recipe.rank, family.recipe.alpha, {"slow": args.seed})
    hold_frozen_base(transformer, profile.training, device, streamed, set(mp.resident_blocks.get("train_step", ())))
    params = _activate_adapter(transformer, "slow")  # the trainer's own adapter switch and optimizer, recipe settings
    optimizer = _build_optimizer(params, TrainConfig.for_family(family), profile.training.optimizer)
    generator = torch.Generator().manual_seed(args.seed)
    config = arch.config("transformer") | arch.transformer_overrides
    latents = torch.randn(1, image_seq_len(args.size, args.size), config["in_channels"], generator=generator).to(device)
    cond = C.random_prompt_embeddings(arch, PROMPT, TRAIN_TEXT_TOKENS, dtype, device)
    state = family.training_state(SimpleNamespace(vae_scale_factor=8), latents, args.size, args.size)
    cap = _cap(profile, device) if args.device is None else None
    times = []
    try:
        for _ in range(2):  # the first step warms up; the second is timed
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=where.dtype != "float32"):
                noisy = (0.5 * latents + 0.5 * torch.randn_like(latents)).to(dtype)
                velocity = family.velocity(transformer, state, noisy, family.timestep_tensor(500.0, noisy), cond)
            loss = torch.nn.functional.mse_loss(velocity.float(), latents.float())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    finally:
        _uncap(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    planned = mp.stages["train_step"]
    on = str(device) if device.type == "cuda" else "cpu"
    out = {
        "profile": name, "cap_gib": cap, "step_seconds": times[-1], "loss": loss.item(), "measured_peak_bytes": peak,
        "planned_peak_bytes": planned.peak(on), "planned_overhead_bytes": planned.overhead.get(on, 0),
        "simulated_peak_bytes": _simulated_peak(mp, "train_step", on),
        "resident_blocks": len(mp.resident_blocks.get("train_step", ())), "planned_pcie_bytes_per_step": mp.pcie.per_train_step,
    }  # fmt: skip
    del transformer, optimizer
    _free()
    return out


# ==== report ========================================================================================================
def _gib(value) -> str:
    return "n/a" if value is None else f"{value / GiB:.2f}"


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device']['name']})", "", f"- command: `{report['command']}`",
             f"- date: {report['date']}; size {report['size']}x{report['size']}; transformer blocks: {report['blocks']}",
             "- planned peak includes the CUDA context (`overhead`); the allocator's peak does not", ""]  # fmt: skip
    lines += ["| profile | cap GiB | stage | seconds | measured peak GiB | planned peak GiB | simulated peak GiB | planned overhead GiB |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in report["profiles"]:
        if "skipped" in run:
            lines.append(f"| {run['profile']} | | skipped: {run['skipped']} | | | | | |")
            continue
        for stage, row in run["stages"].items():
            lines.append(f"| {run['profile']} | {run['cap_gib'] and round(run['cap_gib'], 1)} | {stage} | {row['seconds']:.2f} | "
                         f"{_gib(row['measured_peak_bytes'])} | {_gib(row['planned_peak_bytes'])} | {_gib(row['simulated_peak_bytes'])} "
                         f"| {_gib(row['planned_overhead_bytes'])} |")  # fmt: skip
        lines.append(f"| {run['profile']} | | whole image | {run['seconds']:.2f} | | | | resident blocks {run['resident_blocks']} of {run['blocks']} |")
    if report.get("streamed_vs_resident"):
        check = report["streamed_vs_resident"]
        lines += ["", f"Streamed vs resident ({check['profile']}, same seed): max |latent difference| "
                      f"{check['max_abs_latent_difference']:.3g}, PSNR {check['psnr_db']:.1f} dB."]  # fmt: skip
    lines += ["", "| training step | cap GiB | seconds | measured peak GiB | planned peak GiB | simulated peak GiB | resident blocks | loss |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in report["training"]:
        if "skipped" in run:
            lines.append(f"| {run['profile']} | skipped: {run['skipped']} | | | | | | |")
            continue
        lines.append(f"| {run['profile']} | {run['cap_gib'] and round(run['cap_gib'], 1)} | {run['step_seconds']:.2f} | "
                     f"{_gib(run['measured_peak_bytes'])} | {_gib(run['planned_peak_bytes'])} | {_gib(run['simulated_peak_bytes'])} "
                     f"| {run['resident_blocks']} | {run['loss']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if args.device is None and torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and args.device is None:
        args.device = "cpu"  # no GPU here: the CPU run of the same code path
    arch = C.ARCHS["qwen-image"].with_layers(args.num_layers)
    from glance_lite.profiles import load_profile

    family = C.random_weight_source(arch, load_profile("4090")).family
    report = {
        "command": C.command_line(argv, SCRIPT), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "size": args.size,
        "device": C.describe_device(device), "environment": C.environment(), "profiles": [], "training": [],
        "blocks": (arch.config("transformer") | arch.transformer_overrides)["num_layers"], "streamed_vs_resident": None,
    }  # fmt: skip

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="gpu-check-lora-") as folder:
        loras = {}
        for seed, phase in enumerate(("slow", "fast"), start=1):
            path = Path(folder) / f"{phase}.safetensors"
            C.write_random_lora(C.meta_module(arch, "transformer"), family, path, rank=family.recipe.rank,
                                alpha=family.recipe.alpha, seed=seed, dtype=torch.bfloat16)  # fmt: skip
            loras[phase] = path
        for kind, name in _jobs(args.profile or GPU_PROFILES, args.train_profile or TRAIN_PROFILES):
            if kind == "image":
                report["profiles"].append(_image_job(name, arch, loras, args, device, left, report))
            else:
                report["training"].append(_training_job(name, arch, args, left))
            _write(report, args)  # after every job: a check cut short still leaves its tables
    print(markdown(report))
    return report


def _jobs(image_profiles, train_profiles) -> list[tuple[str, str]]:
    """Each profile's image, with its training step right after it (so the budget reaches the 4090 and 12gb steps
    before the other cards' images), then any training step whose profile has no image run."""
    jobs = []
    for name in image_profiles:
        jobs.append(("image", name))
        if name in train_profiles:
            jobs.append(("train", name))
    return jobs + [("train", name) for name in train_profiles if name not in image_profiles]


def _image_job(name: str, arch, loras: dict, args, device, left, report: dict) -> dict:
    if name == "multi-gpu" and (device.type != "cuda" or torch.cuda.device_count() < 2):
        return {"profile": name, "skipped": "needs two GPUs"}
    if left() <= 0:
        return {"profile": name, "skipped": "time budget spent"}
    print(f"checking {name} ...", flush=True)
    try:
        run = check_profile(name, arch, loras, args)
    except Exception as exc:  # one profile's failure is a result to report, not the end of the check
        _free()
        return {"profile": name, "skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if run["streams"] and report["streamed_vs_resident"] is None and left() > 0:
        report["streamed_vs_resident"] = streamed_equals_resident(run, arch, loras, args)
    return {k: v for k, v in run.items() if k not in ("latents", "image")}


def _training_job(name: str, arch, args, left) -> dict:
    if left() <= 0:
        return {"profile": name, "skipped": "time budget spent"}
    print(f"training step under {name} ...", flush=True)
    try:
        return training_step(name, arch, args)
    except Exception as exc:
        _free()
        return {"profile": name, "skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _write(report: dict, args) -> None:
    folder = args.out or C.RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    C.write_text(folder / "gpu-check.md", text)
    (folder / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(C.run_command_line(main))
