"""`plan --simulate`: every stage's activations measured on the real graph, beside the formula's.

`glance_lite.graph_memory` runs the real diffusers / transformers modules on the `meta` device at the plan's shapes
and counts the bytes of every tensor they create while it lives (attention as the fused GPU kernels allocate it).
Here each stage of a plan is simulated under the profile's settings (the dtype each component computes in, batched
CFG or not, tiled VAE, the training step's precision, checkpointing and rank) and set beside the formula the plan
used. Both stand for the same thing, a stage's live tensors; the named terms the graph cannot contain (the largest
dequantizing temporary, the allocator's headroom, the CUDA context) are added to both alike, so a stage's
simulated peak is its planned peak with the simulated live bytes in place of the formula's. A stage whose two
figures differ by more than 10 % is flagged. The training step is simulated on 2 and 4 blocks and extrapolated
(exact for these models: graph_memory), so a whole profile takes well under a minute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

TOLERANCE = 0.10


@dataclass(frozen=True)
class StageCheck:
    """One component's live activation bytes in a stage: the formula's and the simulation's."""

    stage: str
    component: str
    device: str
    formula_bytes: int
    simulated_bytes: int
    seconds: float
    attention: str

    @property
    def ratio(self) -> float:
        return self.formula_bytes / self.simulated_bytes if self.simulated_bytes else float("inf")

    @property
    def flagged(self) -> bool:
        return abs(self.ratio - 1) > TOLERANCE

    def to_dict(self) -> dict:
        return {**vars(self), "ratio": self.ratio, "flagged": self.flagged}


def _config(configs, name: str) -> dict:
    return json.loads(configs.component(name).config_json)


def simulate(mp, ctx) -> list[StageCheck]:
    """Simulate every stage of `mp` (its profile, shapes and placements; `ctx` the stage context it was planned
    with); one check per stage, on the component whose live bytes set the stage's activations (the larger of FLUX's
    two text encoders, for instance)."""
    from .. import graph_memory as gm
    from .activations import text_encoder_tokens

    profile, family, configs, terms = mp.profile, ctx.family, mp.options["configs"], mp.activation_terms
    attention = gm.AttentionPolicy(flash=(profile.min_compute_capability or 8.0) >= 8.0)
    tokens = mp.tokens["generate"]
    checks = []

    def add(stage: str, sims: dict) -> None:
        if not sims:  # e.g. an architecture planned without its text encoder (random-weight benchmarks)
            return
        component = max(sims, key=lambda name: sims[name].peak_bytes)
        formula = max(terms[stage][name].formula for name in sims)
        sim = sims[component]
        device = mp.stages[stage].placements[component].device
        seconds = sum(s.seconds for s in sims.values())
        checks.append(StageCheck(stage, component, device, formula, sim.peak_bytes, seconds, sim.attention))

    text = {}
    for name in terms["text_encode"]:
        where = ctx.place(name, "text_encode")
        text[name] = gm.simulate_text_encoder(_config(configs, name), attention=attention, dtype=where.dtype,
                                              tokens=text_encoder_tokens(ctx.inventories[name], tokens.text))  # fmt: skip
    add("text_encode", text)
    where = ctx.place("transformer", "denoise")
    masked = family.masks_batched_prompts and mp.batch > 1
    add("slow_phase", {"transformer": gm.simulate_transformer_forward(
        family, _config(configs, "transformer"), batch=mp.batch, height=mp.height, width=mp.width,
        text_tokens=tokens.text, dtype=where.dtype, padding_mask=masked, attention=attention)})  # fmt: skip
    vae = ctx.place("vae", "vae_decode")
    add("vae_decode", {"vae": gm.simulate_vae_decode(_config(configs, "vae"), height=mp.height, width=mp.width,
                                                      dtype=vae.dtype, tiled=profile.component("vae").tiling,
                                                      attention=attention)})  # fmt: skip
    training = profile.training
    train = ctx.place("transformer", "train_step")
    add("train_step", {"transformer": gm.simulate_training_step_from_blocks(
        family, _config(configs, "transformer"), height=mp.height, width=mp.width, text_tokens=mp.tokens["train"].text,
        rank=mp.lora_rank, dtype=train.dtype, optimizer=training.optimizer, attention=attention,
        mixed_precision=training.mixed_precision != "no", gradient_checkpointing=training.gradient_checkpointing,
    )})  # fmt: skip
    return checks


def simulated_peak(stage, checks: list[StageCheck], terms: dict, device: str) -> int:
    """The stage's planned peak on `device` with the simulated live bytes in place of the formula's."""
    name = "slow_phase" if stage.name == "fast_phase" else stage.name
    mine = [c for c in checks if c.stage == name and c.device == device]
    if not mine:
        return stage.peak(device)
    simulated = max(terms[name][c.component].total(c.simulated_bytes) for c in mine)
    return stage.peak(device) - stage.activations.get(device, 0) + simulated


def table(mp, checks: list[StageCheck]) -> list[str]:
    """The rows `plan --simulate` prints: per stage and device, formula beside simulation, flagged beyond 10 %."""
    gib = 2**30
    lines = ["", "Graph simulation (live activation bytes on the meta device, fused attention; "
             "dequantizing temporary, allocator headroom and CUDA context are named terms the graph cannot hold):",
             f"{'stage':<12} {'component':<15} {'device':<7} {'formula':>10} {'simulated':>10} {'ratio':>6}  "
             f"{'planned peak':>12} {'sim. peak':>10}  seconds"]  # fmt: skip
    for check in checks:
        stage = mp.stages[check.stage]  # slow_phase stands for fast_phase too: the same forward
        peak = stage.peak(check.device)
        sim_peak = simulated_peak(stage, checks, mp.activation_terms, check.device)
        flag = "  <-- differ by more than 10 %" if check.flagged else ""
        lines.append(f"{check.stage:<12} {check.component:<15} {check.device:<7} {check.formula_bytes / gib:>8.3f} G "
                     f"{check.simulated_bytes / gib:>8.3f} G {check.ratio:>6.2f}  {peak / gib:>10.2f} G {sim_peak / gib:>8.2f} G"
                     f"  {check.seconds:5.1f}{flag}")  # fmt: skip
    return lines
