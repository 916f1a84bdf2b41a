"""The one-command GPU check: what a session lent a GPU runs first, an instrument that fails loudly.

    python benchmarks/gpu_check.py --out $OUT                       # on the GPU: smoke stage, then jobs by value
    python benchmarks/gpu_check.py --device cpu --arch tiny-qwen --size 64 --smoke-size 64 --profile 12gb \\
        --train-profile 12gb --force-failure "image 12gb"           # rehearse it on a CPU, failure path included

Random-weight Qwen-Image (benchmarks/_common.py: built from the shipped configs with a small seeded init, quantized and
placed by the library's own manager, random rank-32 slow/fast LoRAs loaded from disk; the text encoder is replaced by
random prompt embeddings of the real shape), each GPU profile capped to its card with
`torch.cuda.set_per_process_memory_fraction`. Latencies are those of the card the check ran on, whatever the cap.

1. **Smoke stage** (about a minute): 4 blocks at 512², a copy of the 4090 profile that keeps one block resident and
   streams the others (so diffusers' stream path really runs), one Glance image, the same weights all resident from
   the same noise (streamed must equal resident: garbage from streams was diffusers#12673), and one training step of
   the 4090 training policy. If any of it fails the check stops there and says so.
2. **Jobs in order of value**: the 4090 image at full size and its training step, streamed vs resident at full size,
   the 12gb image and training step, Glance beside Lightning-8 on the 4090 profile (a random LoRA in Lightning's
   key layout, one call per step, no CFG), a100-80gb, 16gb, 8gb, 3090, then the V100 profiles (fp32 compute, no TF32: at
   --v100-size), multi-gpu where there are two GPUs. Before each job its time is estimated from FLOPs and bytes
   (reference notes §9: 70.6 TFLOP per Qwen-Image forward at 1024², PCIe bytes from the plan), scaled by how the
   smoke stage compared with its own estimate; a job that would end after --budget-s is skipped, never started.

Each job records per-stage time, GPU peak (allocated and reserved) beside the planner's prediction, process RAM (peak
RSS while the job ran) and pinned host bytes (torch's pinned allocator) beside the plan, and, for streamed profiles,
how many blocks streamed. A failed job is a FAILED row, its full traceback goes to gpu-check-tracebacks.txt, and the
exit status is 1; tables (gpu-check.md, gpu-check.json) are rewritten after every job, so a run cut short still
reports. Writes to --out (default $OUT, else benchmarks/results/).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = "benchmarks/gpu_check.py"
# Jobs after the smoke stage, most valuable first: (kind, profile).
DEFAULT_JOBS = (
    ("image", "4090"), ("train", "4090"), ("compare", "4090"), ("image", "12gb"), ("train", "12gb"),
    ("methods", "4090"), ("image", "a100-80gb"), ("image", "16gb"), ("image", "8gb"), ("image", "3090"),
    ("image", "v100-32gb"), ("image", "v100-16gb"), ("image", "multi-gpu"),
)  # fmt: skip
PROMPT = "a red fox in the snow, photograph"
TRAIN_TEXT_TOKENS = 1024
GLANCE_STEPS = 10  # 5 slow + 5 fast
MIN_STREAMED_PSNR_DB = 40.0  # below this the streamed picture is not the resident one (garbage from streams)
TRACEBACKS = "gpu-check-tracebacks.txt"
FEWSTEP_STEPS = 8  # Glance beside Lightning-8
GiB = C.GiB

# Effective throughput the estimates assume before the smoke stage calibrates them (conservative; §9 measured
# ~790 TFLOP/s dense bf16 on an H100; weight-only int8/fp8 dequantizes per matmul; fp32 has no tensor cores).
THROUGHPUT = {
    "cuda": {"bfloat16": 250e12, "float16": 250e12, "float32": 30e12, "pcie": 15e9, "build": 3e9, "fixed": 8.0},
    "cpu": {"bfloat16": 0.04e12, "float16": 0.04e12, "float32": 0.1e12, "pcie": float("inf"), "build": 0.5e9, "fixed": 3.0},
}


def build_parser() -> argparse.ArgumentParser:
    p = C.cli.ArgumentParser(prog=f"python {SCRIPT}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", action="append", help="image jobs to run (default: the list in the docstring)")
    p.add_argument("--train-profile", action="append", help="training-step jobs to run (default: 4090, 12gb)")
    p.add_argument("--methods-profile", action="append", help="Glance beside Lightning-8 under these profiles (default: 4090)")
    p.add_argument("--size", type=int, default=1024, help="image height and width of the jobs (default 1024)")
    p.add_argument("--v100-size", type=int, default=512, help="image size of the V100 profiles' jobs (fp32 compute; default 512)")
    p.add_argument("--num-layers", type=int, help="transformer blocks of the jobs (default: all 60)")
    p.add_argument("--arch", choices=("qwen-image", "tiny-qwen"), default="qwen-image", help="tiny-qwen: a quick CPU rehearsal")
    p.add_argument("--smoke-size", type=int, default=512)
    p.add_argument("--smoke-layers", type=int, default=4)
    p.add_argument("--smoke-only", action="store_true", help="stop after the smoke stage")
    p.add_argument("--device", choices=("cpu",), help="run every profile's choices on the CPU (no caps, no streams)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=420, help="no job starts that would end after this (default 420)")
    p.add_argument("--force-failure", action="append", default=[], metavar="JOB",
                   help="make this job raise (e.g. 'image 12gb', 'smoke'): rehearse the failure path")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    return p


# ==== estimates =======================================================================================================
def forward_flops(arch, size: int, text_tokens: int, batch: int) -> float:
    """FLOPs of one Qwen-Image transformer forward (§9): the token-wise linears of both streams (12·D² per token per
    block: q, k, v, out and the 4x MLP) plus attention (4·L²·D per block); modulation sees only the timestep."""
    config = arch.config("transformer") | arch.transformer_overrides
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = (size // 16) ** 2 + text_tokens
    per_block = 2 * tokens * 12 * width**2 + 4 * tokens**2 * width
    return batch * config["num_layers"] * per_block


@dataclass
class Job:
    kind: str  # smoke | image | train | compare | methods
    profile: str
    size: int
    layers: int | None = None
    estimate_s: float = 0.0
    name: str = ""

    def __post_init__(self):
        self.name = self.name or (self.kind if self.kind == "smoke" else f"{self.kind} {self.profile}")


def estimate_seconds(job: Job, arch, device: torch.device, calibration: float) -> float:
    """Seconds a job should take: its FLOPs at the device's throughput in the profile's compute dtype, its PCIe
    traffic, building its random weights, and a fixed part (imports, planning), times the smoke calibration."""
    rates = THROUGHPUT[device.type]
    profile = _job_profile(job)
    mp = _planned(arch, profile, job.size, device)
    dtype = profile.component("transformer").dtype if job.kind != "train" else profile.training.dtype
    image_flops = 2 * GLANCE_STEPS * forward_flops(arch, job.size, arch.prompt_tokens, 2)  # warm-up + timed, batched CFG
    train_flops = 2 * 4 * forward_flops(arch, job.size, TRAIN_TEXT_TOKENS, 1)  # 2 steps x (fwd + recompute + bwd)
    pcie = {"image": 2 * mp.pcie.per_image, "compare": mp.pcie.per_image, "train": 2 * mp.pcie.per_train_step}
    build = mp.components["transformer"].bytes
    if job.kind == "smoke":
        flops = image_flops + GLANCE_STEPS * forward_flops(arch, job.size, arch.prompt_tokens, 2) + train_flops
        seconds = flops / rates[dtype] + 3 * build / rates["build"] + 3 * rates["fixed"]
    else:
        lightning = 2 * FEWSTEP_STEPS * forward_flops(arch, job.size, arch.prompt_tokens, 1)
        flops = {"image": image_flops, "compare": image_flops / 2, "train": train_flops, "methods": image_flops + lightning}[job.kind]
        if job.kind == "methods":  # Glance's traffic, then the few-step method's (one more plan)
            pcie["methods"] = 2 * mp.pcie.per_image + 2 * _planned(arch, profile, job.size, device, method=f"fewstep-{FEWSTEP_STEPS}").pcie.per_image
        seconds = flops / rates[dtype] + pcie.get(job.kind, 0) / rates["pcie"] + build / rates["build"] + rates["fixed"]
    return seconds * calibration


# ==== building and measuring one profile ================================================================================
def _job_profile(job: Job):
    """The profile a job runs: the smoke stage's is a 4090 copy keeping one block resident and streaming the rest."""
    from glance_lite.profiles import load_profile

    profile = load_profile(job.profile)
    if job.kind != "smoke":
        return profile
    transformer = dataclasses.replace(profile.component("transformer"), resident_blocks=1)
    training = dataclasses.replace(profile.training, resident_blocks=1)
    return dataclasses.replace(profile, name=f"{profile.name}-smoke", components={**dict(profile.components), "transformer": transformer},
                               training=training)  # fmt: skip


def _planned(arch, profile, size: int, device: torch.device, simulate: bool = False, method: str | None = None):
    from glance_lite.plan import plan

    return plan(C.arch_configs(arch), profile, size, size, text_tokens=arch.prompt_tokens,
                device="cpu" if device.type == "cpu" else None, simulate=simulate, method=method)  # fmt: skip


def _cap(profile, device: torch.device) -> float | None:
    """Cap the caching allocator to the profile's card; returns the cap in GiB (None on a CPU)."""
    if device.type != "cuda":
        return None
    gb = min(profile.gpu_memory_gb, torch.cuda.get_device_properties(device).total_memory / GiB)
    C.set_vram_cap(gb, device)
    return gb


def _uncap(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def _free() -> None:
    from glance_lite.manager import empty_pinned_cache

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        empty_pinned_cache()  # pinned copies of the last job's streamed blocks


def pinned_host_bytes() -> int | None:
    """Bytes torch's pinned-memory allocator holds now (None without CUDA or on a torch without the counter)."""
    if not torch.cuda.is_available() or not hasattr(torch.cuda, "host_memory_stats"):
        return None
    return int(torch.cuda.host_memory_stats().get("allocated_bytes.current", 0))


class RssPeak:
    """The process's peak resident set size while the block runs (sampled every 50 ms)."""

    def __enter__(self):
        import psutil

        self._process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _open(arch, profile, loras: dict, size: int, args):
    """A Glance on random weights through the library's own manager, LoRA loading and sampler (every LoRA in `loras`
    loaded: slow and fast, and a few-step one when given)."""
    from glance_lite.api import Glance
    from glance_lite.lora import LoraSource

    source = C.random_weight_source(arch, profile)
    manager = C.RandomWeightManager(source, profile, seed=args.seed, device=args.device)
    manager.image_size = (size, size)
    sources = {phase: LoraSource(str(path)) for phase, path in loras.items()}
    return Glance(source, profile, sources, "trained", source.family.default_split, manager=manager)


def _generate(glance, size: int, args, method: str = "glance"):
    return glance.generate(PROMPT, height=size, width=size, seed=args.seed, output_type="pil", progress=False, method=method)


def methods_run(arch, profile, loras: dict, size: int, args, device: torch.device) -> dict:
    """Glance beside a few-step LoRA (Lightning's layout, random weights) on one loaded model: each once to warm up,
    then timed; transformer calls, denoise time and peak per method."""
    glance = _open(arch, profile, loras, size, args)
    cap = _cap(profile, device) if args.device is None else None
    out = {"cap_gib": cap}
    try:
        for method in ("glance", f"fewstep-{FEWSTEP_STEPS}"):
            _generate(glance, size, args, method)
            start = time.perf_counter()
            result = _generate(glance, size, args, method)
            denoise = next(r for r in result.stages if r.stage == "denoise")
            out[method] = {"seconds": time.perf_counter() - start, "denoise_seconds": denoise.seconds,
                           "denoise_peak_bytes": denoise.peak_bytes, "transformer_calls": result.transformer_calls}  # fmt: skip
    finally:
        _uncap(device)
    return out


def _streaming(glance) -> dict:
    """Blocks of the transformer that streamed and that stayed resident, read off the loaded model's hooks."""
    from glance_lite.residency import repeated_blocks, streamed_blocks

    transformer = glance.manager.pipe.transformer
    total = sum(len(blocks) for _, blocks in repeated_blocks(transformer))
    streamed = len(streamed_blocks(transformer))
    return {"blocks": total, "streamed_blocks": streamed, "resident_blocks": total - streamed}


def image_run(arch, profile, loras: dict, size: int, args, device: torch.device) -> dict:
    """One Glance image after a warm-up, measured per stage beside the plan."""
    mp = _planned(arch, profile, size, device)
    with RssPeak() as rss:
        glance = _open(arch, profile, loras, size, args)
        cap = _cap(profile, device) if args.device is None else None
        try:
            _generate(glance, size, args)  # warm-up: kernel selection, lazy init, the streaming order traced
            start = time.perf_counter()
            result = _generate(glance, size, args)
            seconds = time.perf_counter() - start
        finally:
            _uncap(device)
        pinned = pinned_host_bytes()
        streaming = _streaming(glance)
    on = str(device) if device.type == "cuda" else "cpu"
    stages = {}
    for record in result.stages:
        planned = mp.stages.get({"denoise": "slow_phase"}.get(record.stage, record.stage))
        stages[record.stage] = {
            "seconds": record.seconds, "measured_peak_bytes": record.peak_bytes, "measured_reserved_bytes": record.reserved_bytes,
            "planned_peak_bytes": planned.peak(on) if planned else None,
        }  # fmt: skip
    row = {
        "cap_gib": cap, "seconds": seconds, "stages": stages, **streaming, "planned_pcie_bytes_per_image": mp.pcie.per_image,
        "measured_peak_rss_bytes": rss.peak, "planned_peak_ram_bytes": max(s.peak("cpu") for s in mp.stages.values() if s.name != "train_step"),
        "measured_pinned_bytes": pinned, "planned_pinned_bytes": _planned_pinned(mp, profile, device),
    }  # fmt: skip
    return row, glance, result


def _planned_pinned(mp, profile, device: torch.device) -> int:
    """Pinned RAM the plan expects while generating: group offloading's copies of the streamed blocks (streams only)."""
    resident = mp.resident_blocks.get("denoise")
    if resident is None or device.type != "cuda" or not profile.component("transformer").use_stream:
        return 0
    return sum(b for i, b in enumerate(mp.components["transformer"].block_pinned_bytes) if i not in set(resident))


def streamed_equals_resident(arch, profile, loras: dict, size: int, args, device, streamed_result, streaming: dict) -> dict:
    """The same weights with every block resident, same seed, no cap: the streamed picture must be this one."""
    from glance_lite.demo import psnr

    if not (streaming["streamed_blocks"] >= 1 and streaming["resident_blocks"] >= 1):
        raise AssertionError(f"streamed vs resident needs at least one streamed and one resident block; got {streaming}")
    policy = dataclasses.replace(profile.component("transformer"), placement="resident", use_stream=False, blocks_per_group=None,
                                 resident_blocks="auto")  # fmt: skip
    resident = dataclasses.replace(profile, name=f"{profile.name}-resident", components={**dict(profile.components), "transformer": policy})
    glance = _open(arch, resident, loras, size, args)
    result = _generate(glance, size, args)
    difference = (result.latents[0].float().cpu() - streamed_result.latents[0].float().cpu()).abs().max().item()
    quality = psnr(result.image, streamed_result.image)
    del glance, result
    if not (quality >= MIN_STREAMED_PSNR_DB and difference == difference):
        raise AssertionError(f"the streamed picture is not the resident one: PSNR {quality:.1f} dB, max |latent difference| {difference:.3g}")
    return {"max_abs_latent_difference": difference, "psnr_db": quality, **streaming}


def training_step(arch, profile, size: int, args) -> dict:
    """One LoRA step as the trainer holds the base for this profile (storage, streaming, resident blocks, optimizer)."""
    from glance_lite.placement import placement
    from glance_lite.quantize import torch_dtype
    from glance_lite.schedule import image_seq_len
    from glance_lite.train import _activate_adapter, _build_optimizer, add_training_adapters, hold_frozen_base
    from glance_lite.train_config import TrainConfig

    where = placement(profile, "transformer", "train_step", device=args.device)
    device = torch.device(where.device)
    mp = _planned(arch, profile, size, device)
    family = C.random_weight_source(arch, profile).family
    streamed, dtype = where.mode == "streamed", torch_dtype(where.dtype)
    with RssPeak() as rss:
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
        latents = torch.randn(1, image_seq_len(size, size), config["in_channels"], generator=generator).to(device)
        cond = C.random_prompt_embeddings(arch, PROMPT, TRAIN_TEXT_TOKENS, dtype, device)
        state = family.training_state(SimpleNamespace(vae_scale_factor=8), latents, size, size)
        cap = _cap(profile, device) if args.device is None else None
        times = []
        try:
            for _ in range(2):  # the first step warms up; the second is timed
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=dtype, enabled=profile.training.mixed_precision != "no"):
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
        pinned = pinned_host_bytes()
    if not torch.isfinite(loss):
        raise AssertionError(f"the training step's loss is {loss.item()}")
    planned = mp.stages["train_step"]
    on = str(device) if device.type == "cuda" else "cpu"
    return {
        "cap_gib": cap, "step_seconds": times[-1], "loss": loss.item(),
        "measured_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "planned_peak_bytes": planned.peak(on), "resident_blocks": len(mp.resident_blocks.get("train_step", ())),
        "blocks": len(mp.components["transformer"].block_bytes), "planned_pcie_bytes_per_step": mp.pcie.per_train_step,
        "measured_peak_rss_bytes": rss.peak, "planned_peak_ram_bytes": planned.peak("cpu"),
        "measured_pinned_bytes": pinned, "planned_pinned_bytes": planned.weights.get("cpu", 0) if device.type == "cuda" else 0,
    }  # fmt: skip


# ==== jobs ==============================================================================================================
def run_job(job: Job, arch, loras: dict, args, device: torch.device) -> dict:
    """Run one job; raise on failure (the caller records it)."""
    from glance_lite.profiles import load_profile

    if job.name in args.force_failure:
        raise RuntimeError(f"forced failure of job '{job.name}' (--force-failure): rehearsing the failure path")
    job_arch = arch.with_layers(job.layers) if job.layers else arch
    if job.kind == "smoke":
        profile = _job_profile(job)
        image, glance, result = image_run(job_arch, profile, loras, job.size, args, device)
        del glance
        _free()
        compare = streamed_equals_resident(job_arch, profile, loras, job.size, args, device, result, image)
        del result
        _free()
        return {"image": image, "streamed_vs_resident": compare, "train": training_step(job_arch, profile, job.size, args)}
    profile = load_profile(job.profile)
    if job.kind == "image":
        row, glance, result = image_run(job_arch, profile, loras, job.size, args, device)
        del glance, result
        return row
    if job.kind == "methods":
        return methods_run(job_arch, profile, loras, job.size, args, device)
    if job.kind == "compare":
        row, glance, result = image_run(job_arch, profile, loras, job.size, args, device)
        del glance
        _free()
        return streamed_equals_resident(job_arch, profile, loras, job.size, args, device, result, row)
    return training_step(job_arch, profile, job.size, args)


def _chosen_jobs(args) -> list[tuple[str, str]]:
    if args.profile or args.train_profile or args.methods_profile:
        return ([("image", p) for p in args.profile or ()] + [("train", p) for p in args.train_profile or ()]
                + [("methods", p) for p in args.methods_profile or ()])  # fmt: skip
    return list(DEFAULT_JOBS)


def plan_jobs(args, device: torch.device) -> list[Job]:
    from glance_lite.profiles import load_profile

    jobs = []
    for kind, name in _chosen_jobs(args):
        v100 = load_profile(name).compute_dtype == "float16"
        jobs.append(Job(kind, name, args.v100_size if v100 else args.size, args.num_layers))
    return jobs


def _why_not(job: Job, device: torch.device) -> str | None:
    from glance_lite.profiles import load_profile

    profile = load_profile(job.profile)
    if profile.num_gpus > 1 and (device.type != "cuda" or torch.cuda.device_count() < profile.num_gpus):
        return f"needs {profile.num_gpus} GPUs"
    if job.kind not in ("image",) and profile.component("transformer").placement == "sharded":
        return "random weights do not build a sharded transformer"
    return None


def check(argv: list[str] | None = None) -> dict:
    """Run the check; returns the report (`report["failed"]` lists failed jobs)."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if args.device is None and torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and args.device is None:
        args.device = "cpu"  # no GPU here: the CPU run of the same code path
    arch = C.ARCHS[args.arch].with_layers(args.num_layers) if args.num_layers else C.ARCHS[args.arch]
    from glance_lite.profiles import load_profile

    family = C.random_weight_source(arch, load_profile("4090")).family
    report = {
        "command": C.command_line(argv, SCRIPT), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": C.describe_device(device),
        "environment": C.environment(), "budget_s": args.budget_s, "jobs": [], "failed": [], "calibration": 1.0,
    }  # fmt: skip
    out = args.out or C.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / TRACEBACKS).unlink(missing_ok=True)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="gpu-check-lora-") as folder:
        loras = {}
        for seed, phase in enumerate(("slow", "fast"), start=1):
            path = Path(folder) / f"{phase}.safetensors"
            C.write_random_lora(C.meta_module(arch, "transformer"), family, path, rank=family.recipe.rank,
                                alpha=family.recipe.alpha, seed=seed, dtype=torch.bfloat16)  # fmt: skip
            loras[phase] = path
        fewstep = {"fewstep": Path(folder) / "fewstep.safetensors"}
        if not args.smoke_only and any(kind == "methods" for kind, _ in _chosen_jobs(args)):
            C.write_random_lora(C.meta_module(arch, "transformer"), family, fewstep["fewstep"], rank=family.recipe.rank,
                                alpha=family.recipe.rank, seed=3, std=0.01, dtype=torch.bfloat16, layout="lightning")  # fmt: skip
        smoke_layers = min(args.smoke_layers, (arch.config("transformer") | arch.transformer_overrides)["num_layers"])
        smoke = Job("smoke", "4090", args.smoke_size, smoke_layers)
        jobs = [smoke] + ([] if args.smoke_only else plan_jobs(args, device))
        calibration = 1.0
        for job in jobs:
            reason = None if job.kind == "smoke" else _why_not(job, device)
            job.estimate_s = estimate_seconds(job, arch.with_layers(job.layers) if job.layers else arch, device, calibration)
            if reason is None and job.kind != "smoke" and job.estimate_s > left():
                reason = f"estimated {job.estimate_s:.0f} s, {max(left(), 0):.0f} s of the budget left"
            if reason:
                report["jobs"].append({"job": job.name, "status": "skipped", "why": reason, "estimate_s": job.estimate_s})
                _write(report, out)
                continue
            print(f"{job.name}: estimated {job.estimate_s:.0f} s ...", flush=True)
            row = _attempt(job, arch, loras | fewstep if job.kind == "methods" else loras, args, device, out)
            report["jobs"].append(row)
            if row["status"] == "failed":
                report["failed"].append(job.name)
            elif job.kind == "smoke":
                calibration = min(max(row["seconds"] / job.estimate_s, 0.5), 20.0)
                report["calibration"] = calibration
            _write(report, out)
            if job.kind == "smoke" and row["status"] == "failed":
                print("smoke stage failed: the check stops here (see the traceback file).", flush=True)
                break
    print(markdown(report))
    return report


def _attempt(job: Job, arch, loras, args, device, out: Path) -> dict:
    """Run a job; a failure becomes a FAILED row and its traceback is appended to the tracebacks file. The failed
    job's objects are released before the next one starts (the traceback would otherwise keep them alive)."""
    start = time.perf_counter()
    row = {"job": job.name, "estimate_s": job.estimate_s}
    try:
        row.update(status="ok", **run_job(job, arch, loras, args, device))
    except Exception as exc:  # a job's failure is a result to report, and makes the check fail
        text = "".join(traceback.format_exception(exc))
        with open(out / TRACEBACKS, "a", encoding="utf-8") as handle:
            handle.write(f"==== {job.name} ====\n{text}\n")
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300], traceback=TRACEBACKS)
        exc.__traceback__ = None
        del exc
    finally:
        _uncap(device)
        _free()
    row["seconds"] = time.perf_counter() - start
    return row


# ==== report ============================================================================================================
def _gib(value) -> str:
    return "n/a" if value is None else f"{value / GiB:.2f}"


def markdown(report: dict) -> str:
    device = report["device"]
    lines = [f"# GPU check ({device['name']})", "", f"- command: `{report['command']}`",
             f"- date: {report['date']}; budget {report['budget_s']:g} s; estimates x{report['calibration']:.2f} after the smoke stage",
             f"- result: {'FAILED: ' + ', '.join(report['failed']) if report['failed'] else 'every job that ran passed'}",
             "- planned GPU peak includes the CUDA context; the allocator's peak does not", ""]  # fmt: skip
    lines += ["| job | status | estimate s | seconds | notes |", "|---|---|---|---|---|"]
    for row in report["jobs"]:
        note = row.get("why") or (f"{row['error']} (traceback: {row['traceback']})" if row["status"] == "failed" else "")
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
        lines.append(f"| {row['job']} | {row['status']} | {row['estimate_s']:.0f} | {seconds} | {note} |")
    images = [(r["job"], r) for r in report["jobs"] if r["status"] == "ok" and r["job"].startswith("image")]
    images += [(f"{r['job']} (image)", r["image"]) for r in report["jobs"] if r["status"] == "ok" and r["job"] == "smoke"]
    if images:
        lines += ["", "| image job | cap GiB | stage | seconds | measured peak GiB | reserved GiB | planned peak GiB |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, run in images:
            for stage, s in run["stages"].items():
                lines.append(f"| {name} | {run['cap_gib'] and round(run['cap_gib'], 1)} | {stage} | {s['seconds']:.2f} | "
                             f"{_gib(s['measured_peak_bytes'])} | {_gib(s['measured_reserved_bytes'])} | {_gib(s['planned_peak_bytes'])} |")  # fmt: skip
            lines.append(f"| {name} | | whole image | {run['seconds']:.2f} | | | {run['streamed_blocks']} of {run['blocks']} blocks streamed |")
    trains = [(r["job"], r) for r in report["jobs"] if r["status"] == "ok" and r["job"].startswith("train")]
    trains += [(f"{r['job']} (train)", r["train"]) for r in report["jobs"] if r["status"] == "ok" and r["job"] == "smoke"]
    if trains:
        lines += ["", "| training job | cap GiB | step s | measured peak GiB | planned peak GiB | resident blocks | loss |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, run in trains:
            lines.append(f"| {name} | {run['cap_gib'] and round(run['cap_gib'], 1)} | {run['step_seconds']:.2f} | "
                         f"{_gib(run['measured_peak_bytes'])} | {_gib(run['planned_peak_bytes'])} | {run['resident_blocks']} of {run['blocks']} | {run['loss']:.4f} |")  # fmt: skip
    compares = [(r["job"], r) for r in report["jobs"] if r["status"] == "ok" and r["job"].startswith("compare")]
    compares += [(r["job"], r["streamed_vs_resident"]) for r in report["jobs"] if r["status"] == "ok" and r["job"] == "smoke"]
    for name, c in compares:
        lines += ["", f"Streamed vs resident ({name}, same seed): {c['streamed_blocks']} of {c['blocks']} blocks streamed, "
                      f"{c['resident_blocks']} resident; max |latent difference| {c['max_abs_latent_difference']:.3g}, PSNR {c['psnr_db']:.1f} dB."]  # fmt: skip
    for row in (r for r in report["jobs"] if r["status"] == "ok" and r["job"].startswith("methods")):
        lines += ["", f"| {row['job']} | transformer calls | seconds | denoise s | denoise peak GiB |", "|---|---|---|---|---|"]
        for method in ("glance", f"fewstep-{FEWSTEP_STEPS}"):
            m = row[method]
            lines.append(f"| {method} | {m['transformer_calls']} | {m['seconds']:.2f} | {m['denoise_seconds']:.2f} | {_gib(m['denoise_peak_bytes'])} |")
    memory = images + trains
    if memory:
        lines += ["", "| job | peak RSS GiB | planned RAM GiB | pinned GiB | planned pinned GiB |", "|---|---|---|---|---|"]
        for name, run in memory:
            lines.append(f"| {name} | {_gib(run['measured_peak_rss_bytes'])} | {_gib(run['planned_peak_ram_bytes'])} | "
                         f"{_gib(run['measured_pinned_bytes'])} | {_gib(run['planned_pinned_bytes'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _write(report: dict, out: Path) -> None:
    C.write_text(out / "gpu-check.md", markdown(report))
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when every job that ran passed, 1 when one failed (skipped jobs are not failures)."""
    return 1 if check(argv)["failed"] else 0


if __name__ == "__main__":
    sys.exit(C.run_command_line(main))
