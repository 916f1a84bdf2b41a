"""Latency and peak memory of generation, per stage and per profile: Glance (5 slow + 5 fast steps) against the
base model (50 steps, same CFG), measured in one process so that the ratios compare like with like.

    python benchmarks/bench_generate.py --model tiny/qwen-image --profile cpu
    python benchmarks/bench_generate.py --model Qwen/Qwen-Image --profile a100-80gb --profile 4090 --repeats 5
    python benchmarks/bench_generate.py --random-weights --arch qwen-image --profile a100-80gb      # no checkpoint
    python benchmarks/bench_generate.py --random-weights --arch qwen-image --profile 12gb --vram-cap 12

Per profile: load (the light pipeline, then the transformer with both adapters), `--warmup` untimed runs of each
kind, then `--repeats` timed runs alternating Glance, the same 10 steps with the adapters disabled (to separate the
schedule's gain from the LoRA layers' per-step cost) and base; every figure reported is the median over the timed
runs, with process CPU time beside wall time on a CPU. Tiny models run on one torch thread unless `--threads` says
otherwise: their tensors gain nothing from intra-op threads, which on a shared machine make timings erratic. Stages are the library's own (`text_encode`, `denoise`, `vae_decode`); the denoise stage is split into its
sampling phases (slow / fast, or base) at the sampler's adapter switch. Peak memory per stage: on CUDA the
allocator's max_memory_allocated / max_memory_reserved, reset at each stage and phase; on CPU the peak resident
set size of the process, sampled every `--sample-interval` seconds.

The phase switch is timed twice: the adapter swap (`glance_lite.sampler.use_adapter`, slow <-> fast, repeated)
against a reload (evict the transformer, load it again with both adapters: what a pipeline-per-phase approach pays).

Writes <out>/<stem>.json, <stem>.md and <stem>.png (memory over time of the first timed Glance and base runs);
the default stem is <date>-<device>-<model> and the default folder benchmarks/results/.

Side by side (`--methods glance,base-50,base-10,lightning-8`, any subset of `glance_lite.methods` names): per profile
the model is loaded once with every adapter the methods need (slow, fast and a few-step LoRA: `--fewstep-lora`, else
the preset's published file for a real model, the pocket model's shipped distilled one for fewstep-4 / fewstep-2,
else a random one in Lightning's key layout), and each method is timed
(end to end and the denoise stage, median of `--repeats` after `--warmup`), with its transformer calls, peak memory,
the planner's PCIe bytes per image, and the PSNR of its picture to the base-50 picture from the same noise; the
pictures go to a PNG grid (<stem>-methods.png beside <stem>-methods.json / .md).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from glance_lite import sampler as _sampler  # noqa: E402
from glance_lite.memory import MemoryTracker  # noqa: E402

SCRIPT = "benchmarks/bench_generate.py"
RUN_KINDS = ("glance", "glance_no_lora", "base")  # glance_no_lora: the same 10 steps with adapters disabled
TINY_LORA_RANK = 4  # the recipe's 32 would be as wide as the tiny models' 32-wide layers
STAGES = ("text_encode", "denoise", "vae_decode")
TINY_SIZE = 128
POCKET_SIZE = 64  # the pocket world's images
DEFAULT_PROMPT = "a red cube on a wooden table, studio light"
POCKET_PROMPT = "a black circle on a green background, top right"  # in world.HELD_OUT: no pocket model trained on it


# ==== command line =================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = C.cli.ArgumentParser(prog=f"python {SCRIPT}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to measure")
    what.add_argument("--model", default="tiny/qwen-image", help="hub id, local pipeline folder or tiny/* (default: tiny/qwen-image)")
    what.add_argument("--random-weights", action="store_true",
                      help="build --arch from glance_lite/configs with random weights instead of loading --model")  # fmt: skip
    what.add_argument("--arch", choices=sorted(C.ARCHS), help="architecture for --random-weights (tiny-* are the CPU-sized configs)")
    what.add_argument("--num-layers", type=int, help="--random-weights: build this many transformer blocks (full widths)")
    what.add_argument("--prompt-tokens", type=int, help="--random-weights: tokens of the random prompt embeddings (Qwen 128, FLUX 512)")
    what.add_argument("--init-std", type=float, default=0.02, help="--random-weights: std of the random init (default 0.02)")
    what.add_argument("--profile", action="append", help="profile name or YAML (repeat or comma-separate; default: auto)")
    what.add_argument("--slow-lora", help="Slow-LoRA file (default: official LoRAs for official models, random ones otherwise)")
    what.add_argument("--fast-lora", help="Fast-LoRA file")
    what.add_argument("--random-lora", action="store_true", help="use random LoRA files of the family's rank even for a real model")
    what.add_argument("--lora-rank", type=int,
                      help=f"rank of the random LoRAs (default: the family's recipe, 32 Qwen / 16 FLUX; {TINY_LORA_RANK} for tiny models)")  # fmt: skip
    run = p.add_argument_group("how")
    run.add_argument("--height", type=int, help=f"default 1024 ({TINY_SIZE} for tiny models, {POCKET_SIZE} for pocket ones)")
    run.add_argument("--width", type=int, help=f"default 1024 ({TINY_SIZE} for tiny models, {POCKET_SIZE} for pocket ones)")
    run.add_argument("--prompt", help=f"default: {DEFAULT_PROMPT!r} ({POCKET_PROMPT!r} for the pocket model, a held-out caption)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--true-cfg-scale", type=float, help="default: the family's (5 for Qwen-Image, 1 for FLUX.1-dev)")
    run.add_argument("--mode", choices=("consistent", "reference"), default="consistent")
    run.add_argument("--base-steps", type=int, default=50)
    run.add_argument("--methods", help="side by side instead: comma-separated sampling methods, e.g. glance,base-50,base-10,lightning-8")
    run.add_argument("--fewstep-lora", help="the few-step LoRA of --methods fewstep-N / lightning-* (default: the preset's "
                                            "published file for a real model, a random Lightning-layout one otherwise)")  # fmt: skip
    run.add_argument("--repeats", type=int, default=5, help="timed runs of each kind (median reported; default 5)")
    run.add_argument("--warmup", type=int, default=1, help="untimed runs of each kind first (default 1)")
    run.add_argument("--swap-repeats", type=int, default=20, help="adapter swaps timed (default 20)")
    run.add_argument("--no-reload", action="store_true", help="skip timing a transformer reload")
    run.add_argument("--sample-interval", type=float, default=0.01, help="memory timeline sampling period in s")
    run.add_argument("--vram-cap", type=float, metavar="GB", help="emulate a smaller card: cap this process's GPU memory")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for tiny models, torch's choice otherwise)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="output folder (default benchmarks/results/)")
    out.add_argument("--name", help="file stem (default <date>-<device>-<model>)")
    out.add_argument("--quiet", action="store_true")
    return p


def _profiles(args) -> list[str]:
    names = [n.strip() for item in (args.profile or ["auto"]) for n in item.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def _check_args(args, parser) -> None:
    if args.random_weights and not args.arch:
        parser.error("--random-weights needs --arch (qwen-image, flux1-dev, or tiny-qwen / tiny-flux on a CPU)")
    if args.arch and not args.random_weights:
        parser.error("--arch only applies with --random-weights")
    if args.repeats < 1 or args.warmup < 0 or args.base_steps < 1 or args.swap_repeats < 1:
        parser.error("--repeats, --base-steps and --swap-repeats must be >= 1, --warmup >= 0")
    if bool(args.slow_lora) != bool(args.fast_lora):
        parser.error("give both --slow-lora and --fast-lora, or neither")
    if args.random_weights and args.slow_lora:
        parser.error("--random-weights makes its own random LoRAs of the family's shapes")
    if args.random_weights and "auto" in _profiles(args):
        parser.error("--random-weights needs explicit --profile names (auto selection plans for a real checkpoint)")
    if not args.random_weights and (args.num_layers or args.prompt_tokens):
        parser.error("--num-layers and --prompt-tokens only apply with --random-weights")
    if args.methods:
        from glance_lite.methods import MethodError, parse_method

        try:
            fewstep = sorted({m.name for m in (parse_method(n.strip()) for n in args.methods.split(",") if n.strip()) if m.kind == "fewstep"})
        except MethodError as exc:
            parser.error(f"--methods: {exc}")
        if len(fewstep) > 1 and not args.fewstep_lora:  # each preset / shipped LoRA is made for its own step count
            parser.error(f"--methods {', '.join(fewstep)}: a run loads one few-step LoRA, made for one step count; "
                         "benchmark them in separate runs, or give the one LoRA they share with --fewstep-lora")  # fmt: skip


def _is_tiny(args) -> bool:
    """The embedded CPU-sized models (tiny/*, pocket/*, or a tiny-* arch): small defaults, one thread."""
    return (args.arch or "").startswith("tiny-") if args.random_weights else args.model.startswith(("tiny/", "pocket/"))


def _default_size(args) -> int:
    if not _is_tiny(args):
        return 1024
    return POCKET_SIZE if args.model.startswith("pocket/") and not args.random_weights else TINY_SIZE


# ==== opening the model ===========================================================================================
class Bench:
    """One profile's measurements: opens the model, runs, and keeps what was seen."""

    def __init__(self, args, profile_name: str, lora_dir: Path):
        from glance_lite.api import resolve_profile

        self.args = args
        self.model_label = f"random/{args.arch}" if args.random_weights else args.model
        self.profile = resolve_profile(profile_name, args.model, args.height, args.width)
        self.device = C.device_for(self.profile)
        self.tracker = MemoryTracker(self.device, interval=args.sample_interval)
        self.lora_dir = lora_dir
        self.notes: list[str] = []
        self.glance = None

    def open(self, methods=()) -> dict:
        """The "load" stage: what `glance_lite.load` does, then the transformer brought in with its adapters (slow and
        fast, and a few-step LoRA when one of `methods` needs it)."""
        import glance_lite

        args = self.args
        slow, fast = self._lora_files()  # writing random LoRA files is preparation, not part of a load
        fewstep = next((m for m in methods if m.kind == "fewstep"), None)
        fewstep_lora = self._fewstep_lora(fewstep) if fewstep else None
        with self.tracker.stage("load"):
            if args.random_weights:
                self.glance = self._open_random(slow, fast, fewstep_lora)
            else:
                self.glance = glance_lite.load(
                    args.model, slow, fast, profile=self.profile, height=args.height, width=args.width,
                    use_official_loras=not args.random_lora, fewstep_lora=fewstep_lora,
                    method=fewstep if fewstep is not None and fewstep_lora is None else "glance",
                )  # fmt: skip
            self.glance.manager.tracker = self.tracker
            self.glance.manager.bring("transformer")
        record = self.tracker.records[-1]
        if not self.glance.loras:
            self.notes.append("No LoRAs loaded: the Glance schedule ran on the plain base model and no adapter swap was timed.")
        return _record(record)

    def _lora_files(self) -> tuple[str | None, str | None]:
        args = self.args
        if args.random_weights:
            arch = C.ARCHS[args.arch].with_layers(args.num_layers)
            C.check_random_build_fits(arch, self.profile, args.vram_cap)  # before writing ~1 GB of LoRA files
            family = C.random_weight_source(arch, self.profile).family
            dtype = getattr(torch, self.profile.component("transformer").dtype)
            return self._random_loras(lambda: C.meta_module(arch, "transformer"), family, dtype)
        if args.slow_lora:
            return args.slow_lora, args.fast_lora
        if args.random_lora or _is_tiny(args) or not _has_official_loras(args.model):
            from glance_lite.models import meta_component, resolve_model

            source = resolve_model(args.model)
            return self._random_loras(lambda: meta_component(source), source.family, torch.float32)
        return None, None  # glance_lite.load picks the official ones

    def _fewstep_lora(self, method) -> str | None:
        """--fewstep-lora, else (a real model with a preset) None: `load` takes the published file, else the one the
        model ships for that step count (the pocket model's distilled LoRAs), else a random LoRA written in
        Lightning's key layout (`diffusion_model.` + lora_down/lora_up + `.alpha`)."""
        args = self.args
        if args.fewstep_lora:
            return args.fewstep_lora
        if method.preset and not args.random_weights and not args.random_lora and not _is_tiny(args):
            return None
        from glance_lite.pocket import bundled_fewstep_lora

        shipped = None if args.random_weights or args.random_lora or method.preset else bundled_fewstep_lora(args.model, method.steps)
        if shipped is not None:  # the pocket model's distilled LoRA: a real peer
            self.notes.append(f"Few-step LoRA: {shipped.name}, distilled from {args.model} (the one it ships).")
            return str(shipped)
        if args.random_weights:
            arch = C.ARCHS[args.arch].with_layers(args.num_layers)
            meta, family = C.meta_module(arch, "transformer"), C.random_weight_source(arch, self.profile).family
        else:
            from glance_lite.models import meta_component, resolve_model

            source = resolve_model(args.model)
            meta, family = meta_component(source), source.family
        rank = self.args.lora_rank or (TINY_LORA_RANK if _is_tiny(args) else 32)
        path = self.lora_dir / f"fewstep-r{rank}.safetensors"
        if not path.is_file():
            C.write_random_lora(meta, family, path, rank=rank, alpha=rank, seed=3, std=0.01, layout="lightning")
        self.notes.append(f"Few-step LoRA: random rank-{rank} weights in Lightning's key layout (a stand-in: its pictures are not a distilled model's).")
        return str(path)

    def _random_loras(self, meta_transformer, family, dtype) -> tuple[str, str]:
        rank = self.args.lora_rank or (TINY_LORA_RANK if _is_tiny(self.args) else family.recipe.rank)
        alpha = family.recipe.alpha / family.recipe.rank * rank
        paths = []
        for seed, phase in enumerate(("slow", "fast"), start=1):
            path = self.lora_dir / f"{phase}-r{rank}-{str(dtype).removeprefix('torch.')}.safetensors"
            if not path.is_file():
                C.write_random_lora(meta_transformer(), family, path, rank=rank, alpha=alpha, seed=seed, dtype=dtype)
            paths.append(str(path))
        self.notes.append(f"LoRAs: random rank-{rank} adapters (alpha {alpha:g}) on the family's target modules, loaded from disk.")
        return paths[0], paths[1]

    def _open_random(self, slow: str, fast: str, fewstep: str | None = None):
        from glance_lite.api import Glance
        from glance_lite.lora import LoraSource

        args = self.args
        arch = C.ARCHS[args.arch].with_layers(args.num_layers)
        source = C.random_weight_source(arch, self.profile, args.prompt_tokens)
        family = source.family
        manager = C.RandomWeightManager(source, self.profile, seed=args.seed, init_std=args.init_std)
        loras = {"slow": LoraSource(slow), "fast": LoraSource(fast)} | ({"fewstep": LoraSource(fewstep)} if fewstep else {})
        self.notes += [
            f"Random weights: {arch.name} built from glance_lite/configs/{arch.config_dir} "
            f"({_arch_size(arch, args.num_layers)}), seeded N(0, {args.init_std:g}) init; "
            "latency and memory are real, images are not.",
            f"Text encoder replaced by random prompt embeddings [1, {source.prompt_tokens}, "
            f"{(arch.config('transformer') | arch.transformer_overrides)['joint_attention_dim']}] (prompt and negative "
            "prompt alike): the text_encode stage measures nothing; the transformer stages and the VAE decode are real.",
            "Load/reload of random weights = build + random init (+ quantization) on the device, not a read from disk.",
        ]
        return Glance(source, self.profile, loras, "trained", family.default_split, manager=manager)

    # ---- runs --------------------------------------------------------------------------------------------------
    def generate(self, kind: str) -> dict:
        """One generate() call, its stage and phase records, and its slice of the memory timeline."""
        args = self.args
        base_steps = args.base_steps if kind == "base" else None
        phases = self.glance.plan(args.height, args.width, args.mode, base_steps=base_steps).phases
        first_part, first_sample = len(self.tracker.parts), len(self.tracker.timeline)
        with phase_probe(self.tracker, phases, adapters=kind != "glance_no_lora"):
            start, cpu_start = time.perf_counter(), time.process_time()
            result = self.glance.generate(
                args.prompt, height=args.height, width=args.width, seed=args.seed, true_cfg_scale=args.true_cfg_scale,
                mode=args.mode, base_steps=base_steps, output_type="pil", progress=False,
            )  # fmt: skip
            total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
        latents = result.latents[0]
        if not torch.isfinite(latents).all():
            raise RuntimeError(f"{kind} run produced non-finite latents")
        stages = {r.stage: _record(r) for r in result.stages}
        parts = self.tracker.parts[first_part:]
        for part in parts:
            stages[part.stage.split("/", 1)[1]] = _record(part) | {"seconds": result.phase_seconds.get(part.stage.split("/", 1)[1])}
        stages["sampling"] = {  # every phase of this run together: its median is coherent, a sum of medians is not
            "seconds": sum(result.phase_seconds.values()),
            "cpu_seconds": sum(p.cpu_seconds for p in parts),
            "peak_bytes": max(p.peak_bytes for p in parts),
            "reserved_bytes": None if self.device.type != "cuda" else max(p.reserved_bytes for p in parts),
        }
        stages["total"] = {"seconds": total, "cpu_seconds": cpu_total, "peak_bytes": None, "reserved_bytes": None}
        scale = self.glance.family.default_true_cfg_scale if args.true_cfg_scale is None else args.true_cfg_scale
        calls = len(result.plan.steps) * (2 if scale > 1 else 1)
        return {
            "stages": stages,
            "switch_seconds": result.switch_seconds,
            "transformer_forwards": calls,
            "timeline": self.tracker.timeline[first_sample:],
        }

    def run_method(self, method) -> dict:
        """One generate() with a sampling method: end to end and denoise seconds, transformer calls, peaks, picture."""
        args = self.args
        start = time.perf_counter()
        result = self.glance.generate(args.prompt, height=args.height, width=args.width, seed=args.seed,
                                      true_cfg_scale=args.true_cfg_scale, mode=args.mode, method=method, progress=False)  # fmt: skip
        total = time.perf_counter() - start
        if not torch.isfinite(result.latents[0]).all():
            raise RuntimeError(f"{method.name} produced non-finite latents")
        stages = {r.stage: _record(r) for r in result.stages}
        return {"total_seconds": total, "stages": stages, "transformer_calls": result.transformer_calls,
                "image": result.image, "sigmas": result.to_dict()["sigmas"]}  # fmt: skip

    def swap(self) -> dict | None:
        """use_adapter slow <-> fast on the loaded transformer, `--swap-repeats` times each way (fusing the adapter
        into the weights when the profile says `fuse_lora`, as the sampler does)."""
        if not {"slow", "fast"} <= set(self.glance.loras):
            return None
        transformer = self.glance.manager.bring("transformer")
        fuse = self.profile.fuse_lora
        times = []
        _sampler.use_adapter(transformer, "slow", fuse=fuse)
        for i in range(2 * self.args.swap_repeats):
            target = "fast" if i % 2 == 0 else "slow"
            _sync(self.device)
            start = time.perf_counter()
            _sampler.use_adapter(transformer, target, fuse=fuse)
            _sync(self.device)
            times.append(time.perf_counter() - start)
        _sampler.restore_base_weights(transformer)
        what = "glance_lite.sampler.use_adapter, slow <-> fast" + (" (fused: restore the base weights, merge the other)" if fuse else "")
        return {"seconds": C.median(times), "all_seconds": times, "what": what}

    def reload(self) -> dict:
        """Evict the transformer and bring it back with both adapters: the cost a reload-per-phase pipeline pays."""
        times, peaks = [], []
        for _ in range(self.args.repeats):
            self.glance.manager.evict("transformer")
            with self.tracker.stage("reload"):
                self.glance.manager.bring("transformer")
            record = self.tracker.records[-1]
            times.append(record.seconds)
            peaks.append(record.peak_bytes)
        what = (
            "rebuild + random init of the transformer, both adapters read from disk"
            if self.args.random_weights
            else "transformer read from disk (from_pretrained) + both adapters read from disk"
        )
        return {"seconds": C.median(times), "all_seconds": times, "peak_bytes": max(peaks), "what": what}

    def close(self) -> None:
        self.tracker.close()
        self.glance = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _arch_size(arch, num_layers: int | None) -> str:
    if arch.full_size:
        return "full size"
    if num_layers is not None and not C.ARCHS[arch.name.rsplit("-", 1)[0]].transformer_overrides:
        full = arch.config("transformer")
        depth = full["num_layers"] + full.get("num_single_layers", 0)
        built = num_layers * (2 if "num_single_layers" in full else 1)
        return f"full widths, {built} of {depth} transformer blocks"
    return "scaled-down config"


def _has_official_loras(model: str) -> bool:
    from glance_lite.models import resolve_model

    source = resolve_model(model)
    return bool(source.is_official_base and source.family.official_loras)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _record(record) -> dict:
    return {"seconds": record.seconds, "cpu_seconds": record.cpu_seconds, "peak_bytes": record.peak_bytes,
            "reserved_bytes": record.reserved_bytes}  # fmt: skip


@contextmanager
def phase_probe(tracker: MemoryTracker, phases, adapters: bool = True):
    """Split the denoise stage at each sampling phase: the sampler calls `use_adapter` once as every phase starts.

    The split's own cost (a memory sample; on CUDA a synchronize) lands in the sampler's in-run switch time, which
    is why the adapter swap is also timed on its own (`Bench.swap`). `adapters=False` runs every phase on the
    plain base model (adapters disabled), to separate the schedule's gain from the adapters' per-step cost.
    """
    original = _sampler.use_adapter
    names = iter(phases)

    def use_adapter(transformer, adapter, **kwargs):
        tracker.split(next(names, adapter or "base"))
        return original(transformer, adapter if adapters else None, **kwargs)

    _sampler.use_adapter = use_adapter
    try:
        yield
    finally:
        _sampler.use_adapter = original


# ==== one profile, end to end =====================================================================================
def bench_profile(args, profile_name: str, lora_dir: Path, say) -> dict:
    bench = Bench(args, profile_name, lora_dir)
    try:
        say(f"[{bench.profile.name}] loading {bench.model_label} ...")
        load = bench.open()
        say(f"[{bench.profile.name}] load {C.fmt_seconds(load['seconds'])}, peak {C.fmt_bytes(load['peak_bytes'])}")
        for i in range(args.warmup):
            for kind in ("glance", "base"):
                say(f"[{bench.profile.name}] warm-up {kind} {i + 1}/{args.warmup}")
                bench.generate(kind)
        kinds = RUN_KINDS if bench.glance.loras else ("glance", "base")
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for i in range(args.repeats):
            for kind in kinds:  # alternate, so slow drift of a shared machine hits every kind alike
                run = bench.generate(kind)
                runs[kind].append(run)
                say(f"[{bench.profile.name}] {kind} {i + 1}/{args.repeats}: {C.fmt_seconds(run['stages']['total']['seconds'])}")
        swap = bench.swap()
        reload = None if args.no_reload else bench.reload()
        summary = summarize(runs)
        timeline = {kind: runs[kind][0]["timeline"] for kind in ("glance", "base")}
        result = {
            "profile": bench.profile.name,
            "profile_description": bench.profile.description,
            "fuse_lora": bench.profile.fuse_lora,
            "device": C.describe_device(bench.device, args.vram_cap),
            "load": load,
            "runs": summary,
            "ratios": {
                "denoise": C.ratio(summary["base"]["stages"]["denoise"]["seconds"], summary["glance"]["stages"]["denoise"]["seconds"]),
                "sampling_phases": C.ratio(summary["base"]["stages"]["sampling"]["seconds"], summary["glance"]["stages"]["sampling"]["seconds"]),
                "end_to_end": C.ratio(summary["base"]["stages"]["total"]["seconds"], summary["glance"]["stages"]["total"]["seconds"]),
                "transformer_forwards": C.ratio(summary["base"]["transformer_forwards"], summary["glance"]["transformer_forwards"]),
            },
            "cpu_time_ratios": {
                stage: C.ratio(summary["base"]["stages"][stage]["cpu_seconds"], summary["glance"]["stages"][stage]["cpu_seconds"])
                for stage in ("denoise", "total")
            },
            "adapter_overhead": _adapter_overhead(summary),
            "adapter_swap": swap,
            "reload": reload,
            "reload_over_swap": C.ratio(reload and reload["seconds"], swap and swap["seconds"]),
            "notes": bench.notes,
        }
        return result, timeline
    finally:
        bench.close()


def _adapter_overhead(summary: dict) -> dict | None:
    """How much slower the 10 Glance steps are with the LoRAs active than with adapters disabled."""
    if "glance_no_lora" not in summary:
        return None
    with_lora = summary["glance"]["stages"]["sampling"]["seconds"]
    without = summary["glance_no_lora"]["stages"]["sampling"]["seconds"]
    return {
        "sampling_seconds_with_lora": with_lora,
        "sampling_seconds_without_lora": without,
        "relative": None if not without else with_lora / without - 1,
        "base_over_glance_without_lora_denoise": C.ratio(
            summary["base"]["stages"]["denoise"]["seconds"], summary["glance_no_lora"]["stages"]["denoise"]["seconds"]
        ),
    }


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Median seconds and max peak per stage over the timed runs of each kind (all values kept)."""
    summary = {}
    for kind, kind_runs in runs.items():
        stages = {}
        for stage in kind_runs[0]["stages"]:
            seconds = [r["stages"][stage]["seconds"] for r in kind_runs]
            cpu = [r["stages"][stage].get("cpu_seconds") for r in kind_runs]
            peaks = [r["stages"][stage]["peak_bytes"] for r in kind_runs]
            reserved = [r["stages"][stage].get("reserved_bytes") for r in kind_runs]
            stages[stage] = {
                "seconds": C.median(seconds),
                "all_seconds": seconds,
                "cpu_seconds": C.median(cpu) if None not in cpu else None,
                "all_cpu_seconds": cpu,
                "peak_bytes": max(peaks) if None not in peaks else None,
                "reserved_bytes": max(reserved) if None not in reserved else None,
            }
        switch = [r["switch_seconds"].get("fast") for r in kind_runs]
        summary[kind] = {
            "stages": stages,
            "transformer_forwards": kind_runs[0]["transformer_forwards"],
            "in_run_switch_seconds": C.median(switch) if None not in switch else None,
        }
    return summary


# ==== report =======================================================================================================
def markdown(report: dict, png_names: dict[str, str]) -> str:
    s = report["settings"]
    lines = [f"# Generation benchmark: {report['model']}", ""] + C.header_lines(
        report,
        f"{s['height']}x{s['width']}, true CFG scale {s['true_cfg_scale']:g}, schedule mode {s['mode']}, seed {s['seed']}; "
        f"Glance = 5 slow + 5 fast steps, base = {s['base_steps']} steps; {s['warmup']} warm-up run(s) of each, "
        f"then the median of {s['repeats']} timed run(s) of each, alternating",
    )
    for name, profile in report["profiles"].items():
        cuda = profile["device"]["type"] == "cuda"
        mem = "peak allocated / reserved" if cuda else "peak RSS"
        glance, base = profile["runs"]["glance"], profile["runs"]["base"]
        lines += ["", f"## Profile `{name}`", "", profile["profile_description"], ""]
        labels = [("text_encode", "text encode"), ("denoise", "denoise (stage)"), ("slow", "· slow phase (5 steps)"),
                  ("fast", "· fast phase (5 steps)"), ("base", f"· base phase ({s['base_steps']} steps)"),
                  ("sampling", "· sampling loop (all phases)"), ("vae_decode", "VAE decode"),
                  ("total", "end to end (generate call)")]  # fmt: skip
        header = ["stage", "Glance 5+5", f"base {s['base_steps']}", "base / Glance"]
        if not cuda:
            header += ["Glance CPU time", "base CPU time", "base / Glance (CPU)"]
        rows = [["load (light pipeline + transformer + adapters)", C.fmt_seconds(profile["load"]["seconds"]), "", ""]
                + ([C.fmt_seconds(profile["load"]["cpu_seconds"]), "", ""] if not cuda else [])]  # fmt: skip
        for key, label in labels:
            g, b = glance["stages"].get(key) or {}, base["stages"].get(key) or {}
            row = [label, C.fmt_seconds(g.get("seconds")), C.fmt_seconds(b.get("seconds")),
                   C.fmt_ratio(C.ratio(b.get("seconds"), g.get("seconds"))) if g and b else ""]  # fmt: skip
            if not cuda:
                row += [C.fmt_seconds(g.get("cpu_seconds")), C.fmt_seconds(b.get("cpu_seconds")),
                        C.fmt_ratio(C.ratio(b.get("cpu_seconds"), g.get("cpu_seconds"))) if g and b else ""]  # fmt: skip
            rows.append(row)
        lines += ["Wall time (median):", "", C.markdown_table(header, rows), ""]
        rows = [["load", _mem(profile["load"], cuda), ""]]
        if profile["reload"]:
            rows.append(["reload", _mem(profile["reload"], cuda), ""])
        for key, label in labels[:-1]:
            g, b = glance["stages"].get(key), base["stages"].get(key)
            rows.append([label, _mem(g, cuda) or "–", _mem(b, cuda) or "–"])
        lines += [f"Peak memory ({mem}, max over the timed runs):", "", C.markdown_table(["stage", "Glance 5+5", f"base {s['base_steps']}"], rows)]
        r = profile["ratios"]
        lines += [
            "",
            f"- transformer forwards: Glance {glance['transformer_forwards']}, base {base['transformer_forwards']} "
            f"({C.fmt_ratio(r['transformer_forwards'])})",
            f"- **base / Glance wall time: denoise stage {C.fmt_ratio(r['denoise'])}, sampling phases only "
            f"{C.fmt_ratio(r['sampling_phases'])}, end to end {C.fmt_ratio(r['end_to_end'])}**",
        ]
        if not cuda:
            cr = profile["cpu_time_ratios"]
            lines.append(f"- base / Glance process CPU time (steadier on a shared machine): denoise stage "
                         f"{C.fmt_ratio(cr['denoise'])}, end to end {C.fmt_ratio(cr['total'])}")  # fmt: skip
        swap, reload = profile["adapter_swap"], profile["reload"]
        overhead = profile.get("adapter_overhead")
        if overhead:
            lines.append(
                f"- the same 10 steps with the adapters disabled: sampling {C.fmt_seconds(overhead['sampling_seconds_without_lora'])} "
                f"(with LoRAs {C.fmt_seconds(overhead['sampling_seconds_with_lora'])}: the "
                f"{'LoRAs, fused into the weights by the profile (fuse_lora), swaps included,' if profile.get('fuse_lora') else 'unfused LoRA layers'} "
                f"cost {overhead['relative'] * 100:+.0f}% over these steps); base / Glance-without-LoRA denoise "
                f"{C.fmt_ratio(overhead['base_over_glance_without_lora_denoise'])}"
            )
        if swap:
            lines.append(f"- adapter swap ({swap['what']}): median {C.fmt_seconds(swap['seconds'])} over {len(swap['all_seconds'])}; "
                         f"inside a Glance run (includes the phase probe): {C.fmt_seconds(glance['in_run_switch_seconds'])}")  # fmt: skip
        if reload:
            lines.append(f"- reload ({reload['what']}): median {C.fmt_seconds(reload['seconds'])} over {len(reload['all_seconds'])}, "
                         f"peak {_mem(reload, cuda)}")  # fmt: skip
        if swap and reload:
            lines.append(f"- **reload / swap: {C.fmt_ratio(profile['reload_over_swap'])}**")
        for note in profile["notes"]:
            lines.append(f"- {note}")
        if name in png_names:
            lines += ["", f"![memory over time, profile {name}]({png_names[name]})"]
    lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _mem(record: dict | None, cuda: bool) -> str:
    if not record or record.get("peak_bytes") is None:
        return ""
    text = C.fmt_bytes(record["peak_bytes"])
    if cuda and record.get("reserved_bytes") is not None:
        text += f" / {C.fmt_bytes(record['reserved_bytes'])}"
    return text


def general_notes(args, device: torch.device) -> list[str]:
    notes = [
        "Times are wall-clock medians; ratios are ratios of medians. Peak memory is the maximum over the timed runs.",
        "The slow/fast/base rows time the sampling loop of each phase (the sampler's own clock); the denoise stage "
        "also holds bringing the transformer in and preparing the latents.",
    ]
    if device.type == "cpu":
        notes.append("CPU time is the process's CPU time (time.process_time, all threads). On a machine shared with other "
                     "jobs wall time also counts waiting for a core and CPU time does not, so its ratios are the steadier "
                     "ones; it does count OpenMP threads spinning while they wait for work.")  # fmt: skip
        notes.append("CPU peak memory is the resident set size of the whole Python process (libraries, all loaded "
                     "components), sampled; it is not comparable with GPU figures.")  # fmt: skip
    else:
        notes.append("CUDA peaks exclude the CUDA context (~0.5 GB): add it when comparing with a card's size.")
    if args.vram_cap:
        notes.append(f"--vram-cap {args.vram_cap:g}: the allocator was capped with set_per_process_memory_fraction; "
                     "compute and PCIe are the card's own, so latencies are this card's, not the emulated one's.")  # fmt: skip
    if _is_tiny(args):
        notes.append("Tiny and pocket models: text encode and VAE decode are a fixed cost comparable to the whole denoise stage, so the "
                     "end-to-end ratio is far below the denoise ratio; on full-size models the transformer dominates.")  # fmt: skip
    return notes


# ==== main =========================================================================================================
def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the report (plus the written paths). Leaves torch's thread count and RNG as found."""
    return C.keeping_torch_state(_main, argv)


def _main(argv: list[str] | None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    size = _default_size(args)
    args.height, args.width = args.height or size, args.width or size
    pocket = args.model.startswith("pocket/") and not args.random_weights
    args.prompt = args.prompt or (POCKET_PROMPT if pocket else DEFAULT_PROMPT)
    say = (lambda *_: None) if args.quiet else (lambda text: print(text, flush=True))
    from glance_lite.api import resolve_profile

    profile_names = _profiles(args)
    if args.methods:
        from _side_by_side import compare_methods

        args.argv = argv
        if args.threads is None and _is_tiny(args):
            torch.set_num_threads(1)
        return compare_methods(args, profile_names, say)
    first_device = C.device_for(resolve_profile(profile_names[0], args.model, args.height, args.width))
    C.set_vram_cap(args.vram_cap, first_device)
    torch.manual_seed(args.seed)
    if args.threads is None and _is_tiny(args):
        args.threads = 1  # tiny tensors gain nothing from intra-op threads; on a shared machine they cost a lot
    if args.threads:
        torch.set_num_threads(args.threads)

    model = _model_label(args)
    report = {
        "benchmark": "generate",
        "command": C.command_line(argv, SCRIPT),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "model": model,
        "random_weights": bool(args.random_weights),
        "device": C.describe_device(first_device, args.vram_cap),
        "vram_cap_gb": args.vram_cap,
        "environment": C.environment(),
        "settings": {
            "height": args.height, "width": args.width, "prompt": args.prompt, "seed": args.seed, "mode": args.mode,
            "true_cfg_scale": None, "base_steps": args.base_steps, "repeats": args.repeats, "warmup": args.warmup,
            "swap_repeats": args.swap_repeats, "sample_interval": args.sample_interval,
        },  # fmt: skip
        "profiles": {},
        "notes": general_notes(args, first_device),
    }
    timelines = {}
    with tempfile.TemporaryDirectory(prefix="glance-bench-lora-") as lora_dir:
        for name in profile_names:
            result, timeline = bench_profile(args, name, Path(lora_dir), say)
            report["profiles"][result["profile"]] = result
            timelines[result["profile"]] = timeline
    family_scale = None
    if args.true_cfg_scale is None:
        from glance_lite.families import family_for_pipeline_class

        cls = C.ARCHS[args.arch].pipeline_class_name if args.random_weights else None
        family_scale = (family_for_pipeline_class(cls) if cls else _family(args.model)).default_true_cfg_scale
    report["settings"]["true_cfg_scale"] = args.true_cfg_scale if args.true_cfg_scale is not None else family_scale

    tag = _model_tag(args)
    folder, stem = C.output_paths(args.out, args.name or C.result_stem("generate", first_device, tag, args.vram_cap))
    png_names = {}
    for name, timeline in timelines.items():
        png = folder / (f"{stem}.png" if len(timelines) == 1 else f"{stem}-{name}.png")
        cuda = report["profiles"][name]["device"]["type"] == "cuda"
        C.plot_timeline(
            [(f"Glance 5+5 (first timed run), profile {name}", timeline["glance"]),
             (f"base {args.base_steps} steps (first timed run), profile {name}", timeline["base"])],
            png, "GPU memory allocated" if cuda else "process RSS", f"{model} on {report['device']['name']}",
        )  # fmt: skip
        png_names[name] = png.name
    report["files"] = {"json": f"{stem}.json", "markdown": f"{stem}.md", "timeline_png": png_names}
    text = markdown(report, png_names)
    C.write_json(folder / f"{stem}.json", report)
    C.write_text(folder / f"{stem}.md", text)
    if not args.quiet:
        print()
        print(text)
        print(f"wrote {folder / stem}.json, .md, " + ", ".join(png_names.values()))
    report["paths"] = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "png": [folder / p for p in png_names.values()]}
    return report


def _model_label(args) -> str:
    return f"random/{args.arch}" + (f" ({args.num_layers} layers)" if args.num_layers else "") if args.random_weights else args.model


def _model_tag(args) -> str:
    return C.model_tag(f"random-{args.arch}" + (f"-{args.num_layers}l" if args.num_layers else "") if args.random_weights else args.model)


def _family(model: str):
    from glance_lite.models import resolve_model

    return resolve_model(model).family


if __name__ == "__main__":
    sys.exit(C.run_command_line(main))
