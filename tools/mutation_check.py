"""Break one behaviour at a time and show that the default test suite notices.

    python tools/mutation_check.py                       # every mutation; writes benchmarks/results/mutation-check.md
    python tools/mutation_check.py --only apply          # the mutations whose name contains "apply"

Each mutation replaces one exact piece of the code (it must occur exactly once, so a refactor that moves it makes
this script fail loudly instead of mutating nothing), runs the default tests chosen to catch it, and restores the
file whatever happens. A mutation is "caught" when those tests fail. The table lists the behaviours the suite once
passed without (issue "A green suite that means what it says"), the fixes of issue "The first GPU run works",
undone one by one, and the two things few-step distillation must get right (the target, the teacher).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "mutation-check.md"
RECIPE_4090 = "tests/test_real_width.py::test_the_training_recipe_each_profile_names_is_what_runs_under_cuda_autocast[4090]"
STAND_IN = "tests/test_placement.py::test_every_tensor_is_where_its_placement_says_in_every_stage"
DISTILLED = "tests/test_distill.py::test_the_student_lands_closer_to_the_teacher_in_two_unguided_steps"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the behaviour removed, in words
    edits: tuple[tuple[str, str, str], ...]  # (file, exact text, replacement)
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("optimizer", "the trainer's optimizer is always torch.optim.AdamW (adamw8bit ignored)",
             (("glance_lite/train.py", 'if name == "adamw8bit":', "if False:"),), (RECIPE_4090,)),
    Mutation("quantization", "built and loaded models are never quantized (quantize_built, quantize_after_load, loading_kwargs)",
             (("glance_lite/quantize.py", '    if quantization in _TORCHAO_CONFIGS:\n        from torchao.quantization import quantize_\n',
               '    return module\n    if quantization in _TORCHAO_CONFIGS:\n        from torchao.quantization import quantize_\n'),
              ("glance_lite/quantize.py", '    if quantization not in _QUANTO_WEIGHTS or getattr(module, "_glance_quantized", False):',
               '    if True:'),
              ("glance_lite/quantize.py", '    if quantization == "none":\n        return {}\n', '    if True:\n        return {}\n')),
             (RECIPE_4090, STAND_IN, "tests/test_cuda_emulation.py::test_no_shipped_training_base_takes_a_kernel_that_compiles_or_refuses_fp32_on_any_card")),
    Mutation("apply", "ComponentManager._apply returns at once (nothing parked, kept, evicted or moved)",
             (("glance_lite/manager.py", '        """Make a loaded component be where `where` says."""\n',
               '        """Make a loaded component be where `where` says."""\n        return\n'),), (STAND_IN,)),
    Mutation("resident-plain", "resident blocks' plain (non-torchao) tensors are never moved to the card",
             (("glance_lite/residency.py", "                    tensor.data = tensor.data.to(self.device)\n", "                    pass\n"),),
             (STAND_IN,)),
    Mutation("streaming", "group offloading never moves streamed blocks to the compute device",
             (("glance_lite/residency.py", "            onload_device=device,\n", '            onload_device=torch.device("cpu"),\n'),),
             (STAND_IN,)),
    Mutation("gpu-check-resident", "the GPU check's streamed == resident compares two all-resident runs",
             (("benchmarks/gpu_check.py", 'profile.component("transformer"), resident_blocks=1)', 'profile.component("transformer"), resident_blocks="auto")'),),
             ("tests/test_benchmarks.py::test_the_gpu_check_smoke_stage_streams_really_compares_and_a_failure_fails_the_check",)),
    Mutation("row1-qfloat8-base", "the 4090 profile's frozen training base back to quanto qfloat8 (Marlin FP8 on sm_89)",
             (("profiles/4090.yaml", "base_quantization: quanto-qint8", "base_quantization: quanto-qfloat8"),
              ("glance_lite/profiles.py", '    elif not on_cpu and (kernel := cuda_quanto_problem(training["base_quantization"], "training.base_quantization")):\n        errors.append(kernel)\n', "")),
             (RECIPE_4090, "tests/test_cuda_emulation.py::test_no_shipped_training_base_takes_a_kernel_that_compiles_or_refuses_fp32_on_any_card")),
    Mutation("row2-latent-dtype", "latents and prompt embeddings keep the text encoder's dtype (fp16 on a V100)",
             (("glance_lite/api.py", "condition), device, dtype) for p in prompts]", "condition), device, None) for p in prompts]"),
              ("glance_lite/api.py", "condition), device, dtype) if scale > 1 else None", "condition), device, None) if scale > 1 else None"),
              ("glance_lite/api.py", "state = family.prepare_latents(pipe, height, width, generator, dtype, device, condition)",
               'state = family.prepare_latents(pipe, height, width, generator, cond["prompt_embeds"].dtype, device, condition)')),
             ("tests/test_cuda_emulation.py::test_every_linear_of_the_transformer_computes_in_the_profiles_transformer_dtype",)),
    Mutation("row3-pinned-ram", "the plan counts streamed blocks' RAM at their raw bytes, not as the pinned allocator holds them",
             (("glance_lite/plan/stages.py", "            _add(weights, \"cpu\", plan.resident_bytes + plan.streamed_host_bytes)",
               "            _add(weights, \"cpu\", plan.resident_bytes + plan.streamed_bytes)"),),
             ("tests/test_cuda_emulation.py::test_the_plan_counts_the_pinned_ram_group_offloading_really_takes",)),
    Mutation("row4-current-device", "accelerate launch processes never set their current CUDA device",
             (("glance_lite/gpus.py", "        torch.cuda.set_device(index)\n", "        pass\n"),),
             ("tests/test_cuda_emulation.py::test_each_process_under_accelerate_launch_makes_its_own_gpu_current_before_anything_else",)),
    Mutation("row5-card-check", "an explicit --profile is not checked against the card (capability, memory, torch build)",
             (("glance_lite/gpus.py", "    for card in (read_card(i) for i in wanted):\n", "    for card in ():\n"),),
             ("tests/test_cuda_emulation.py::test_a_profile_the_card_cannot_run_is_refused_in_one_line_before_anything_loads",)),
    Mutation("distill-target", "the distilled student learns each segment's displacement instead of its velocity",
             (("glance_lite/distill.py", "        target = (x_next - x) / (step.sigma_next - step.sigma)\n", "        target = x_next - x\n"),),
             (DISTILLED,)),
    Mutation("distill-teacher-cfg", "the distillation teacher samples without true CFG (not what generate's base-N draws)",
             (("glance_lite/distill.py", "if cfg.teacher_cfg > 1 else None", "if cfg.teacher_cfg > 1e9 else None"),),
             (DISTILLED,)),
)


def run(mutation: Mutation) -> dict:
    originals = {}
    try:
        for file, old, new in mutation.edits:
            path = REPO / file
            originals.setdefault(path, path.read_text())
            current = path.read_text()
            if current.count(old) != 1:
                raise SystemExit(f"mutation {mutation.name}: {file} holds {current.count(old)} copies of the text to replace; update this script")
            path.write_text(current.replace(old, new))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *mutation.tests],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
        summary = next((line for line in reversed(done.stdout.splitlines()) if " in " in line and ("passed" in line or "failed" in line or "error" in line)), done.stdout[-200:])
        return {"caught": done.returncode != 0, "summary": summary.strip("= "), "seconds": time.perf_counter() - start}
    finally:
        for path, text in originals.items():
            path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the mutations whose name contains this")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    lines = ["# Mutation check", "", f"- command: `python tools/mutation_check.py{' --only ' + args.only if args.only else ''}`",
             f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}", "- each row: one behaviour broken, the default tests that must notice, what they said", "",
             "| mutation | behaviour removed | tests | result |", "|---|---|---|---|"]  # fmt: skip
    missed = []
    for mutation in chosen:
        print(f"{mutation.name}: {mutation.what} ...", flush=True)
        outcome = run(mutation)
        if not outcome["caught"]:
            missed.append(mutation.name)
        verdict = ("caught: " if outcome["caught"] else "MISSED: ") + outcome["summary"]
        print(f"  {verdict} ({outcome['seconds']:.0f} s)", flush=True)
        tests = "<br>".join(f"`{t.split('::')[-1]}`" for t in mutation.tests)
        lines.append(f"| {mutation.name} | {mutation.what} | {tests} | {verdict} |")
    lines += ["", f"{len(chosen) - len(missed)} of {len(chosen)} mutations caught" + (f"; missed: {', '.join(missed)}" if missed else ".")]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
