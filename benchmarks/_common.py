"""What both benchmarks share: run description, result files (JSON + markdown), the memory timeline PNG, and the
random-weight builders that let a card without the real checkpoints measure full-size latency and memory.

Random weights (reference notes §12): the architecture comes from the configs shipped in `glance_lite/configs/`,
is built on the meta device, then materialized one block at a time on the execution device in the profile's
dtype (bf16 on a GPU; never the full model in fp32) and filled with a small seeded init, then quantized and placed
as the profile says. The text encoder is replaced by seeded random prompt embeddings of the shape the real
encoder gives, so the text_encode stage of a random-weight run measures nothing: the numbers that matter are the
transformer stages (load, slow/fast/base phases) and the VAE decode. Everything else -- `Glance.generate`, the
manager's stages and placements, LoRA loading, the sampler -- is the library's own code. The `tiny-*` archs are the
same configs with the size knobs of the embedded tiny models, so CPU tests run this path end to end.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import os
import platform
import re
import shlex
import statistics
import sys
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
CONFIGS = REPO / "glance_lite" / "configs"

if str(REPO) not in sys.path:  # `python benchmarks/bench_x.py` from a source checkout
    sys.path.insert(0, str(REPO))

from glance_lite import cli  # noqa: E402
from glance_lite.errors import SetupError  # noqa: E402
from glance_lite.manager import ComponentManager  # noqa: E402
from glance_lite.models import ModelSource  # noqa: E402

GiB, MiB = 2**30, 2**20


# ==== describing a run ============================================================================================
def command_line(argv: list[str] | None, script: str) -> str:
    """The exact command that produced a result: the process's own argv, or (called in-process) the script + argv."""
    if argv is None:
        return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    return shlex.join(["python", script, *argv])


def device_for(profile) -> torch.device:
    """The execution device a profile runs on (the manager's rule)."""
    if profile.device == "cuda":
        return torch.device("cuda", profile.component("transformer").gpu)
    return torch.device("cpu")


def describe_device(device: torch.device, vram_cap_gb: float | None = None) -> dict:
    info: dict = {"type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            total_memory_bytes=props.total_memory,
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            vram_cap_gb=vram_cap_gb,
        )
    else:
        info["name"] = _cpu_name()
    import psutil

    info.update(cpu_cores=os.cpu_count(), system_ram_bytes=psutil.virtual_memory().total)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_tag(device: torch.device, vram_cap_gb: float | None = None) -> str:
    """'cpu', 'h100', 'rtx-4090', ... (+ '-cap12gb'), for file names."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower().replace("nvidia", "").replace("geforce", "")
    name = re.sub(r"\b(pcie|sxm\d?|hbm\d?e?|\d+gb)\b", "", name)
    tag = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cuda"
    return tag + (f"-cap{vram_cap_gb:g}gb" if vram_cap_gb else "")


def environment() -> dict:
    """Library versions and how busy the machine was (a loaded machine makes CPU timings noisy)."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "peft", "accelerate", "torchao", "optimum-quanto", "bitsandbytes"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    env = {"versions": versions, "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return env


def set_vram_cap(gb: float | None, device: torch.device) -> None:
    """Emulate a smaller card: the caching allocator may take at most `gb` GiB (not the card's compute or PCIe)."""
    if gb is None:
        return
    if device.type != "cuda":
        raise cli.UsageError("--vram-cap emulates a smaller GPU and needs a CUDA profile; this run is on the CPU.")
    total = torch.cuda.get_device_properties(device).total_memory
    if gb * GiB > total:
        raise cli.UsageError(f"--vram-cap {gb:g} GB is more than this card has ({total / GiB:.1f} GiB).")
    torch.cuda.set_per_process_memory_fraction(gb * GiB / total, device)


# ==== numbers and files ===========================================================================================
def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(count: int | None) -> str:
    if count is None:
        return "–"
    return f"{count / GiB:.2f} GiB" if count >= GiB else f"{count / MiB:.0f} MiB"


def fmt_ratio(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.1f}×"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def output_paths(out_dir: Path | None, stem: str) -> tuple[Path, str]:
    """(folder, stem) for this run's files; never overwrites an earlier result of the same day (adds -2, -3...)."""
    folder = Path(out_dir) if out_dir else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    candidate, n = stem, 1
    while any(folder.glob(f"{candidate}.*")) or any(folder.glob(f"{candidate}-*.png")):
        n += 1
        candidate = f"{stem}-{n}"
    return folder, candidate


def result_stem(kind: str, device: torch.device, model_tag: str, vram_cap_gb: float | None = None) -> str:
    """e.g. '2026-05-01-cpu-tiny-qwen-image' (generate) or '2026-05-01-h100-qwen-image-train'."""
    date = _dt.date.today().isoformat()
    suffix = "" if kind == "generate" else f"-{kind}"
    return f"{date}-{device_tag(device, vram_cap_gb)}-{model_tag}{suffix}"


def model_tag(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ==== the memory timeline =========================================================================================
STAGE_COLORS = {
    "load": "#7f7f7f", "text_encode": "#1f77b4", "denoise": "#bcbd22", "denoise/slow": "#ff7f0e",
    "denoise/fast": "#d62728", "denoise/base": "#9467bd", "vae_decode": "#2ca02c", "idle": "#ffffff",
}  # fmt: skip


def plot_timeline(panels: list[tuple[str, list[tuple[float, int, str]]]], path: Path, ylabel: str, title: str) -> Path:
    """One panel per run: memory over time (seconds from the run's start), background coloured by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.8 * len(panels)), squeeze=False, sharex=True)
    peak = max((b for _, samples in panels for _, b, _ in samples), default=1)
    scale, unit = (GiB, "GiB") if peak >= GiB else (MiB, "MiB")
    seen: dict[str, str] = {}
    for ax, (name, samples) in zip(axes[:, 0], panels):
        if not samples:
            ax.set_title(f"{name}: no samples")
            continue
        t0 = samples[0][0]
        times = [t - t0 for t, _, _ in samples]
        values = [b / scale for _, b, _ in samples]
        start = 0
        for i in range(1, len(samples) + 1):  # shade each run of equal stage labels
            if i == len(samples) or samples[i][2] != samples[start][2]:
                label = samples[start][2]
                color = STAGE_COLORS.get(label, "#17becf")
                end = times[i] if i < len(samples) else times[-1]
                if label != "idle":
                    ax.axvspan(times[start], end, color=color, alpha=0.25, lw=0)
                    seen[label] = color
                start = i
        ax.step(times, values, where="post", color="black", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(f"{ylabel} ({unit})")
        ax.set_ylim(bottom=0, top=peak / scale * 1.1)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds from the start of the run")
    names = {"denoise": "denoise (before the first phase)"}
    handles = [Patch(color=c, alpha=0.4, label=names.get(s, s)) for s, c in seen.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.8, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ==== random weights: architectures ===============================================================================
@dataclass(frozen=True)
class Arch:
    """A transformer + VAE architecture from `glance_lite/configs/<config_dir>/`, optionally scaled down."""

    name: str
    config_dir: str
    pipeline_class_name: str
    prompt_tokens: int  # text tokens the real encoder gives for a typical prompt (FLUX pads T5 to 512)
    transformer_overrides: dict = field(default_factory=dict)
    vae_overrides: dict = field(default_factory=dict)

    @property
    def full_size(self) -> bool:
        return not self.transformer_overrides

    def config(self, component: str) -> dict:
        return json.loads((CONFIGS / self.config_dir / f"{component}_config.json").read_text())

    def with_layers(self, num_layers: int | None) -> "Arch":
        """The same widths with another transformer depth (FLUX: double and single blocks both set to it)."""
        if num_layers is None:
            return self
        depth = {"num_layers": num_layers}
        if self.config_dir == "flux1-dev":
            depth["num_single_layers"] = num_layers
        return Arch(f"{self.name}-{num_layers}layers", self.config_dir, self.pipeline_class_name, self.prompt_tokens,
                    {**self.transformer_overrides, **depth}, self.vae_overrides)  # fmt: skip


# The tiny sizes mirror glance_lite/tiny.py (2 heads x 16, RoPE axes 4+6+6, 32-wide text, 8x-downsampling small VAEs).
_TINY_ATTENTION = {"num_attention_heads": 2, "attention_head_dim": 16, "axes_dims_rope": (4, 6, 6), "joint_attention_dim": 32}
ARCHS = {
    "qwen-image": Arch("qwen-image", "qwen-image", "QwenImagePipeline", prompt_tokens=128),
    "flux1-dev": Arch("flux1-dev", "flux1-dev", "FluxPipeline", prompt_tokens=512),
    "tiny-qwen": Arch(
        "tiny-qwen", "qwen-image", "QwenImagePipeline", prompt_tokens=16,
        transformer_overrides={"num_layers": 2, **_TINY_ATTENTION},
        vae_overrides={"base_dim": 8, "num_res_blocks": 1},
    ),
    "tiny-flux": Arch(
        "tiny-flux", "flux1-dev", "FluxPipeline", prompt_tokens=32,
        transformer_overrides={"num_layers": 1, "num_single_layers": 1, "pooled_projection_dim": 32, **_TINY_ATTENTION},
        vae_overrides={"block_out_channels": (16, 16, 16, 16), "down_block_types": ("DownEncoderBlock2D",) * 4,
                       "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "norm_num_groups": 8},
    ),
}  # fmt: skip


def _component_cls(arch: Arch, component: str):
    import diffusers

    return getattr(diffusers, arch.config(component)["_class_name"])


def _from_config(cls, config: dict, overrides: dict):
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in config.items() if k in accepted} | overrides)


def arch_configs(arch: Arch):
    """The planner's view of an architecture (its transformer and VAE configs, overrides applied)."""
    from glance_lite.plan import ModelConfigs
    from glance_lite.plan.configs import ComponentConfig

    components = []
    for component in ("transformer", "vae"):
        overrides = arch.transformer_overrides if component == "transformer" else arch.vae_overrides
        config = {**arch.config(component), **{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}
        components.append(ComponentConfig(component, "diffusers", config["_class_name"], json.dumps(config, sort_keys=True)))
    scheduler = json.dumps(arch.config("scheduler"), sort_keys=True)
    return ModelConfigs(f"random/{arch.name}", arch.pipeline_class_name, tuple(components), scheduler)


def meta_module(arch: Arch, component: str):
    """`component` ("transformer" or "vae") of `arch` on the meta device: shapes and parameter counts, no memory.

    `init_empty_weights` (not `torch.device('meta')`) keeps buffers and plain tensors such as RoPE tables real.
    """
    from accelerate import init_empty_weights

    overrides = arch.transformer_overrides if component == "transformer" else arch.vae_overrides
    with init_empty_weights():
        return _from_config(_component_cls(arch, component), arch.config(component), overrides)


# ==== random weights: materializing =================================================================================
def _units(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The pieces materialized one at a time, by name: each block of a ModuleList, and every other top-level child."""
    units = []
    for name, child in module.named_children():
        if isinstance(child, torch.nn.ModuleList):
            units.extend((f"{name}.{index}", block) for index, block in enumerate(child))
        else:
            units.append((name, child))
    if any(True for _ in module.parameters(recurse=False)):
        raise ValueError(f"{type(module).__name__} has parameters outside its children; materialize() cannot split it.")
    return units


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@torch.no_grad()
def _random_init_(unit: torch.nn.Module, generator: torch.Generator, std: float) -> None:
    """Norm scales 1, biases 0, every other weight N(0, std): small enough that 60 random blocks stay finite."""
    for sub in unit.modules():
        norm = _is_norm(sub)
        for name, param in sub.named_parameters(recurse=False):
            if name == "bias":
                param.zero_()
            elif norm:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)


def materialize_(
    module: torch.nn.Module,
    *,
    dtype: torch.dtype,
    init_device: torch.device,
    home_device: torch.device,
    seed: int,
    std: float = 0.02,
    quantization: str = "none",
) -> torch.nn.Module:
    """Give a meta-built module seeded random weights, one unit (block) at a time, and leave it on `home_device`.

    Each unit is allocated on `init_device` in `dtype` (fast random init on a GPU), quantized there if asked
    (`glance_lite.quantize.quantize_built`: torchao or quanto, the Linear weights the loaders quantize), then moved
    to `home_device` (CPU RAM for offloaded placements). At most one unit is ever held twice, so a full-size model is
    never materialized in fp32 or on a device it would not fit.
    """
    from glance_lite.quantize import quantize_built

    if quantization.startswith("bnb-"):
        raise ValueError(
            f"Random weights support torchao and quanto quantizations or none, not {quantization!r}: "
            "bitsandbytes quantizes only while loading a checkpoint."
        )
    for index, (name, unit) in enumerate(_units(module)):
        buffers = dict(unit.named_buffers())  # init_empty_weights left them real
        unit.to(dtype=dtype)  # meta parameters: free
        unit.to_empty(device=init_device)
        for buffer_name, buf in buffers.items():
            owner, _, leaf = buffer_name.rpartition(".")
            setattr(unit.get_submodule(owner) if owner else unit, leaf, buf.to(init_device))
        generator = torch.Generator(device=init_device).manual_seed(seed * 100_003 + index)
        _random_init_(unit, generator, std)
        if quantization.startswith("quanto-") and not any(True for _ in unit.children()):
            # quanto swaps a layer in its parent and cannot quantize the module it is given (a top-level Linear
            # such as `img_in`): quantize that one child through the whole model
            quantize_built(module, quantization, only=name)
            unit = module.get_submodule(name)
        else:
            quantize_built(unit, quantization)
        unit.to(home_device)
    module._glance_quantized = quantization != "none"
    left = [name for name, p in module.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"materialize_ left {len(left)} parameters on the meta device, e.g. {left[:3]}")
    return module.eval().requires_grad_(False)


def random_prompt_embeddings(arch: Arch, prompt: str, tokens: int, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """What the family's text encoder would return for `prompt`, with the right shapes and seeded random values."""
    config = arch.config("transformer") | arch.transformer_overrides
    generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    embeds = torch.randn(1, tokens, config["joint_attention_dim"], generator=generator).to(device, dtype)
    if arch.config_dir == "flux1-dev":
        pooled = torch.randn(1, config["pooled_projection_dim"], generator=generator).to(device, dtype)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "text_ids": torch.zeros(tokens, 3, device=device, dtype=dtype)}
    return {"prompt_embeds": embeds}  # a single prompt with no padding: the stock pipeline drops the all-ones mask


@dataclass(frozen=True)
class RandomWeightSource(ModelSource):
    """A model that exists only as an architecture: its family encodes prompts as random embeddings."""

    arch: Arch | None = None
    prompt_tokens: int = 0
    embedding_dtype: str = "float32"  # the text encoder's dtype: the real pipelines return embeddings in it

    @cached_property
    def family(self):
        base = type(ModelSource.family.func(self))
        arch, tokens, dtype = self.arch, self.prompt_tokens, getattr(torch, self.embedding_dtype)

        class RandomPromptFamily(base):
            def encode_prompt(self, pipe, prompt, device, image=None):
                return random_prompt_embeddings(arch, prompt, tokens, dtype, device)

        RandomPromptFamily.__name__ = f"RandomPrompt{base.__name__}"
        return RandomPromptFamily()


def random_weight_source(arch: Arch, profile, prompt_tokens: int | None = None) -> RandomWeightSource:
    components = {
        "transformer": ("diffusers", arch.config("transformer")["_class_name"]),
        "vae": ("diffusers", arch.config("vae")["_class_name"]),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    }
    return RandomWeightSource(
        f"random/{arch.name}", str(CONFIGS / arch.config_dir), arch.pipeline_class_name, components,
        arch=arch, prompt_tokens=prompt_tokens or arch.prompt_tokens, embedding_dtype=profile.component("text_encoder").dtype,
    )  # fmt: skip


class RandomWeightManager(ComponentManager):
    """The library's ComponentManager, with weights built from configs instead of read from a checkpoint.

    Stages, placements (resident / group_offload / ...), eviction and the adapter callbacks are the parent's. A
    "load" of the transformer is a build + random init + (quanto) quantization; a reload rebuilds it.
    """

    def __init__(self, source: RandomWeightSource, profile, *, seed: int = 0, init_std: float = 0.02, tracker=None, device=None):
        self.seed, self.init_std = seed, init_std
        super().__init__(source, profile, tracker, device=device)

    def _dtype(self, component: str) -> torch.dtype:
        return getattr(torch, self.policy(component).dtype)

    def plan(self):
        """The plan of the architecture itself (resident blocks of a --num-layers build are its own)."""
        from glance_lite.plan import plan as make_plan

        return make_plan(arch_configs(self.source.arch), self.profile, *self.image_size, device=self.device_override)

    def _load_light_pipeline(self):
        """Scheduler and VAE (random, in CPU RAM like a loaded one); no tokenizers or text encoders."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        arch = self.source.arch
        vae = materialize_(
            meta_module(arch, "vae"), dtype=self._dtype("vae"), init_device=torch.device("cpu"),
            home_device=torch.device("cpu"), seed=self.seed + 1, std=self.init_std,
        )  # fmt: skip
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(arch.config("scheduler"))
        parameters = inspect.signature(self.family.pipeline_class.__init__).parameters
        empty = {name: None for name, p in parameters.items() if name not in ("self", "scheduler", "vae") and p.default is p.empty}
        pipe = self.family.pipeline_class(scheduler=scheduler, vae=vae, **empty)
        if self.policy("vae").tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        return pipe

    def _instantiate(self, component: str, where):
        if component != "transformer":
            raise ValueError(f"random weights build only the transformer on demand, not {component!r}")
        if where.mode == "sharded":
            raise ValueError("random weights do not support the sharded (multi-GPU) placement")
        return materialize_(
            meta_module(self.source.arch, "transformer"),
            dtype=getattr(torch, where.dtype),
            init_device=self.device,
            home_device=self.device if where.mode == "whole" else torch.device("cpu"),
            seed=self.seed,
            std=self.init_std,
            quantization=where.quantization,
        )


def check_random_build_fits(arch: Arch, profile, vram_cap_gb: float | None = None) -> None:
    """Refuse before building what cannot fit: fp32 full size on a GPU, or weights larger than where they live."""
    import psutil

    from glance_lite.placement import placement
    from glance_lite.plan.inventory import inventory
    from glance_lite.plan.storage import component_bytes

    policy = profile.component("transformer")
    device = device_for(profile)
    if device.type == "cuda" and policy.dtype == "float32" and arch.full_size and policy.quantization == "none":
        raise cli.UsageError("refusing to build a full-size transformer in float32 on the GPU; use a bf16/fp16 profile.")
    needed = component_bytes(inventory(arch_configs(arch).component("transformer")), policy.dtype, policy.quantization)
    # where `_instantiate` builds it: on the GPU when it runs whole there, else in RAM (streamed, parked)
    on_gpu = device.type == "cuda" and placement(profile, "transformer", "denoise").mode == "whole"
    if on_gpu:
        free, _ = torch.cuda.mem_get_info(device)  # does not know about set_per_process_memory_fraction
        where, available = "GPU memory free", min(free, vram_cap_gb * GiB) if vram_cap_gb else free
    else:
        where, available = "system RAM available", psutil.virtual_memory().available
    if needed > available:
        raise SetupError(
            f"the {arch.name} transformer takes {needed / GiB:.1f} GiB in {policy.dtype}/{policy.quantization} "
            f"under profile {profile.name}, more than the {available / GiB:.1f} GiB {where}. "
            "Use a GPU profile, --num-layers to build fewer blocks, or a tiny-* arch."
        )


# ==== LoRA files ==================================================================================================
def write_random_lora(transformer, family, path: Path, *, rank: int, alpha: float, seed: int, std: float = 0.05, dtype=torch.float32,
                      layout: str = "glance_lite") -> Path:  # fmt: skip
    """A LoRA file for `transformer` (real or meta-built) with random A and B, written by `glance_lite.lora.save_lora`
    (`layout="lightning"`: `diffusion_model.` + lora_down/lora_up + `.alpha` keys, as Qwen-Image-Lightning ships).

    A default-initialized LoRA is a no-op (B = 0), so both factors are random: switching adapters then changes what
    the model computes, and a benchmark's adapter swap is real. The adapter is removed again afterwards.
    """
    from peft import LoraConfig

    from glance_lite.lora import save_lora

    name = "bench_random"
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(family.lora_target_modules), init_lora_weights=False)
    transformer.add_adapter(config, adapter_name=name)
    generator = torch.Generator().manual_seed(seed)
    for module in transformer.modules():
        for side in ("lora_A", "lora_B"):
            factors = getattr(module, side, None)
            if isinstance(factors, torch.nn.ModuleDict) and name in factors:
                factor = factors[name]  # on the meta device when the transformer was built there
                values = torch.randn(factor.weight.shape, generator=generator) * std
                factor.weight = torch.nn.Parameter(values.to(dtype), requires_grad=False)
    try:
        if layout == "lightning":
            from peft.utils import get_peft_model_state_dict

            from glance_lite.lora import lora_modules, write_lora_file

            modules = lora_modules(get_peft_model_state_dict(transformer, adapter_name=name))
            return write_lora_file(Path(path), modules, {m: float(alpha) for m in modules}, "diffusion_model.", factors="lora_down")
        return save_lora(transformer, family, name, Path(path))
    finally:
        transformer.delete_adapters(name)


def run_command_line(main) -> int:
    """The scripts' entry point, behind glance_lite's command-line boundary (`glance_lite.cli`): a user's mistake
    (unknown profile or model, bad profile YAML, missing file, a plan that does not fit, an OOM that says what to
    try) is one `error:` line and exit status 2, not a traceback; a bug keeps its traceback. `main()`'s int result is
    the exit status (a report dict counts as 0)."""
    return cli.run(main, own_code=(Path(__file__).resolve().parent,))


def keeping_torch_state(run, argv):
    """`run(argv)` with torch's thread count and CPU RNG restored afterwards (benchmarks are called from tests too)."""
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            return run(argv)
    finally:
        torch.set_num_threads(threads)


def header_lines(report: dict, settings: str) -> list[str]:
    """The markdown bullet lines every benchmark report starts with: command, date and device, settings,
    library versions, and the machine's load when the run began (timings on a shared machine need it)."""
    env, device = report["environment"], report["device"]
    cap = f" (capped to {report['vram_cap_gb']:g} GB)" if report.get("vram_cap_gb") else ""
    lines = [
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; device: {device['name']}{cap}",
        f"- {settings}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        + f"; torch threads: {env['torch_threads']}",
    ]
    if "load_average_at_start" in env:
        lines.append(f"- machine load average at start (1/5/15 min): {env['load_average_at_start']} on {device['cpu_cores']} cores")
    return lines
