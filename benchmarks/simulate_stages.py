"""Activation memory per stage, from the real graph (glance_lite.graph_memory), beside the planner's formulas.

    PYTHONPATH=. python benchmarks/simulate_stages.py                       # both sections, markdown on stdout
    PYTHONPATH=. python benchmarks/simulate_stages.py --section measurements --json out.json

Section "measurements" (1024x1024): Qwen-Image and FLUX.1-dev transformer forwards (batch 1 / 2, bf16 and fp32,
fused and math attention, with and without Qwen-Image's padding mask), the training step (recipe rank, gradient
checkpointing, bf16 base, 1024 / 512 text tokens), the text encoders and the VAE decodes (tiled or not, bf16 and
fp32). Each row: the simulated peak, the planner's raw formula for the same case (`plan.py`:
`transformer_inference_activations` etc., no slack, no dequantizing temporary), their ratio, and the simulation's
wall time. A block-scaling row checks whether a few-block training run extrapolates to the full model.

Section "profiles": for every shipped profile, each stage's activation term as `plan()` reports it (slack and
dequantizing temporary included) beside the simulation of that stage under the profile's settings plus the same
dequantizing temporary, and the training step's LoRA weights + gradients + optimizer state (plan vs counted).
Ratios outside 0.9-1.1 are flagged. Nothing here needs a GPU or weights; a full run takes ~10 minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from glance_lite import cli  # noqa: E402
from glance_lite import graph_memory as gm  # noqa: E402
from glance_lite.plan.simulation import TOLERANCE  # noqa: E402
from glance_lite import plan as planner  # noqa: E402
from glance_lite.families import family_for_pipeline_class  # noqa: E402
from glance_lite.profiles import list_profiles, load_profile  # noqa: E402

GiB = 2**30
SIZE = 1024
MODELS = ("Qwen/Qwen-Image", "black-forest-labs/FLUX.1-dev")


class Model:
    """Configs, inventories (for the formulas) and family of one shipped model."""

    def __init__(self, model_id: str):
        self.id = model_id
        self.configs = planner.model_configs(model_id)
        self.family = family_for_pipeline_class(self.configs.pipeline_class)

    def config(self, name: str) -> dict:
        return json.loads(self.configs.component(name).config_json)

    def inventory(self, name: str):
        return planner.inventory(self.configs.component(name))

    @property
    def text_encoders(self) -> list[str]:
        return [c.name for c in self.configs.components if c.name.startswith("text_encoder")]

    def text_tokens(self, name: str, tokens: int) -> int:
        """CLIP sees at most its 77 positions whatever the prompt length."""
        return planner.activations.text_encoder_tokens(self.inventory(name), tokens)


_CACHE: dict[tuple, gm.StageSimulation] = {}


def simulated(kind: str, model: Model, **kwargs) -> gm.StageSimulation:
    """One simulation, run once per distinct (kind, model, arguments)."""
    key = (kind, model.id, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _CACHE:
        if kind == "forward":
            _CACHE[key] = gm.simulate_transformer_forward(model.family, model.config("transformer"), **kwargs)
        elif kind == "train":
            _CACHE[key] = gm.simulate_training_step(model.family, model.config("transformer"), **kwargs)
        elif kind == "train_from_blocks":
            _CACHE[key] = gm.simulate_training_step_from_blocks(model.family, model.config("transformer"), **kwargs)
        elif kind == "text":
            name = kwargs.pop("component")
            _CACHE[key] = gm.simulate_text_encoder(model.config(name), **kwargs)
        elif kind == "vae":
            _CACHE[key] = gm.simulate_vae_decode(model.config("vae"), **kwargs)
        print(f"  simulated {kind} {model.id} {kwargs}: {_CACHE[key].peak_bytes / GiB:.3f} GiB in "
              f"{_CACHE[key].seconds:.1f} s", file=sys.stderr)  # fmt: skip
    return _CACHE[key]


def _row(what: str, sim: gm.StageSimulation, formula: int | None, **extra) -> dict:
    return {"what": what, "simulated": sim.peak_bytes, "formula": formula, "seconds": round(sim.seconds, 1),
            "attention": sim.attention, **extra}  # fmt: skip


# ==== section 1: measurements =====================================================================================
def measurements() -> list[dict]:
    rows = []
    image = (SIZE // 16) ** 2
    for model in map(Model, MODELS):
        inv = model.inventory("transformer")
        qwen = model.family.name == "qwen-image"
        text = model.family.generate_text_tokens
        cases = [(1, "bfloat16", False, "fused"), (2, "bfloat16", False, "fused")]
        if qwen:
            cases += [(2, "bfloat16", True, "fused"), (2, "bfloat16", True, gm.AttentionPolicy(materialize_mask_bias=True))]
        cases += [(2 if qwen else 1, "bfloat16", False, "math"), (1, "float32", False, "fused")]
        if qwen:
            cases += [(2, "float32", True, "fused")]
        for batch, dtype, mask, attention in cases:
            sim = simulated("forward", model, batch=batch, height=SIZE, width=SIZE, text_tokens=text, dtype=dtype,
                            padding_mask=mask, attention=attention)  # fmt: skip
            formula = planner.activations.transformer_inference_activations(inv, planner.Tokens(image, text), batch, dtype,
                                                                            model.family.mlp_ratio)  # fmt: skip
            label = attention if isinstance(attention, str) else "fused, full mask bias (older torch)"
            rows.append(_row(f"{model.id} transformer forward, batch {batch}, {dtype}, mask {mask}, {label}", sim, formula))

        train_text = model.family.train_text_tokens
        sim = simulated("train", model, height=SIZE, width=SIZE, text_tokens=train_text)
        formula = planner.activations.transformer_training_activations(inv, planner.Tokens(image, train_text), 1,
                                                                       "bfloat16", model.family.mlp_ratio, True)  # fmt: skip
        rank, optimizer = model.family.recipe.rank, model.family.recipe.optimizer
        lora = planner.lora_param_count(inv, model.family.lora_target_modules, rank)
        trainable_formula = lora * (planner.activations.LORA_TRAIN_PARAM_BYTES + planner.activations.LORA_GRAD_BYTES
                                    + planner.activations.OPTIMIZER_STATE_BYTES[optimizer])  # fmt: skip
        rows.append(_row(
            f"{model.id} training step, rank {rank}, {train_text} text tokens, bf16 base, checkpointing, {optimizer}",
            sim, formula, forward_peak=sim.forward_peak_bytes, kept_for_backward=sim.kept_for_backward_bytes,
            lora_params=sim.lora_params, trainable=sim.lora_weight_bytes + sim.lora_grad_bytes + sim.optimizer_state_bytes,
            trainable_formula=trainable_formula, optimizer_step=sim.optimizer_step_bytes, step_peak=sim.step_peak_bytes,
        ))  # fmt: skip
        # Does a few-block run scale linearly to the full model? (graph_memory.simulate_training_step_from_blocks)
        scaled = simulated("train_from_blocks", model, height=SIZE, width=SIZE, text_tokens=train_text)
        rows.append({"what": f"{model.id} training step from 2- and 4-block runs, extrapolated to the full model",
                     "simulated": scaled.peak_bytes, "formula": sim.peak_bytes, "seconds": round(scaled.seconds, 1),
                     "attention": "(formula column: the full simulation above)"})  # fmt: skip

        for name in model.text_encoders:
            tokens = model.text_tokens(name, text)
            sim = simulated("text", model, component=name, tokens=tokens, dtype="bfloat16")
            formula = planner.activations.text_encoder_activations(model.inventory(name), tokens, "bfloat16",
                                                                   model.family.text_encoder_hidden_states)  # fmt: skip
            rows.append(_row(f"{model.id} {name} ({sim.notes[0].split(',')[0]}), {tokens} tokens, bf16 "
                             f"(formula at the plan's {text})", sim, formula))  # fmt: skip
        for tiled in (False, True):
            for dtype in ("bfloat16", "float32"):
                sim = simulated("vae", model, height=SIZE, width=SIZE, dtype=dtype, tiled=tiled)
                formula = planner.activations.vae_activations(model.inventory("vae"), SIZE, SIZE, dtype, tiled, "decode")
                rows.append(_row(f"{model.id} VAE decode, {dtype}, tiled {tiled}", sim, formula))
    return rows


# ==== section 2: per shipped profile ==============================================================================
def profile_rows(model: Model, profile_name: str) -> list[dict]:
    """`plan(simulate=True)`: every stage's formula beside its simulation under the profile's settings."""
    result = planner.plan(model.id, load_profile(profile_name), SIZE, SIZE, simulate=True)
    rows = []
    for check in result.simulation:
        terms = result.activation_terms[check.stage][check.component]
        rows.append({"model": model.id, "profile": profile_name, "stage": check.stage, "component": check.component,
                     "plan": check.formula_bytes, "simulated": check.simulated_bytes, "dequant": terms.dequant,
                     "seconds": round(check.seconds, 1), "attention": check.attention})  # fmt: skip
    return rows


# ==== output =======================================================================================================
def _gib(n) -> str:
    return "" if n is None else f"{n / GiB:.3f}"


def _ratio(a, b) -> str:
    if not a or not b:
        return ""
    r = a / b
    return f"{r:.2f}" + (" **!**" if abs(r - 1) > TOLERANCE else "")


def markdown_measurements(rows: list[dict]) -> str:
    lines = ["| case | simulated GiB | formula GiB | formula / sim | sim s | attention |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {_gib(r['simulated'])} | {_gib(r['formula'])} | {_ratio(r['formula'], r['simulated'])} "
                     f"| {r['seconds']} | {r['attention']} |")  # fmt: skip
    train = [r for r in rows if "lora_params" in r]
    if train:
        lines += ["", "| training step | forward peak | kept for backward | fwd+bwd peak | LoRA params | LoRA+grads+optimizer "
                  "(counted / plan) | optimizer step peak | step peak above the frozen base |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in train:
            lines.append(f"| {r['what'].split(',')[0]} | {_gib(r['forward_peak'])} | {_gib(r['kept_for_backward'])} "
                         f"| {_gib(r['simulated'])} | {r['lora_params']:,} | {_gib(r['trainable'])} / {_gib(r['trainable_formula'])} "
                         f"| {_gib(r['optimizer_step'])} | {_gib(r['step_peak'])} |")  # fmt: skip
    return "\n".join(lines)


def markdown_profiles(rows: list[dict]) -> str:
    lines = ["| model | profile | stage | component | formula GiB | simulated GiB | formula / sim | dequantizing temporary GiB "
             "(both) | sim s |", "|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model'].split('/')[-1]} | {r['profile']} | {r['stage']} | {r['component']} | {_gib(r['plan'])} "
                     f"| {_gib(r['simulated'])} | {_ratio(r['plan'], r['simulated'])} | {_gib(r['dequant'])} | {r['seconds']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=("measurements", "profiles", "all"), default="all")
    parser.add_argument("--model", action="append", choices=MODELS, help="profiles section: these models (default both)")
    parser.add_argument("--profile", action="append", help="profiles section: these profiles (default all shipped)")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    out = {"command": shlex.join(["python", "benchmarks/simulate_stages.py", *(sys.argv[1:] if argv is None else argv)])}
    out["load_average"] = os.getloadavg()
    print(f"Command: `{out['command']}` (load average at start: {', '.join(f'{x:.1f}' for x in out['load_average'])})\n")
    if args.section in ("measurements", "all"):
        out["measurements"] = measurements()
        print("## Measurements at 1024x1024\n\n" + markdown_measurements(out["measurements"]) + "\n")
    if args.section in ("profiles", "all"):
        out["profiles"] = []
        for model_id in args.model or MODELS:
            model = Model(model_id)
            for name in args.profile or list_profiles():
                out["profiles"] += profile_rows(model, name)
        print("## Per shipped profile at 1024x1024\n\n" + markdown_profiles(out["profiles"]) + "\n")
    print(f"Total wall time: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, own_code=(Path(__file__).resolve().parent,)))
