"""`bench_generate.py --methods ...`: sampling methods side by side, one loaded model per profile, the same noise.

For every profile: the model is loaded once with every adapter the methods need, then each method is run `--warmup`
times untimed and `--repeats` times timed (methods alternating, so a shared machine's drift hits each alike). Per
method: end-to-end and denoise-stage wall time (medians), transformer calls per image, peak memory of the denoise
stage (CUDA allocator or process RSS), the planner's weight bytes over PCIe per image for that method, and the PSNR
of its picture to the base-50 picture from the same seed (the noise is the same: one generator, one dtype). The
pictures form a PNG grid, one row per profile.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as C

REFERENCE = "base-50"


def compare_methods(args, profile_names: list[str], say) -> dict:
    """Run the side-by-side benchmark (see the module docstring); returns the report with the paths written."""
    import bench_generate as BG  # the Bench that opens the model and runs a method

    from glance_lite.demo import psnr
    from glance_lite.methods import parse_method

    methods = [parse_method(name.strip()) for name in args.methods.split(",") if name.strip()]
    reference = parse_method(REFERENCE)
    report = {"benchmark": "generate-methods", "command": C.command_line(None if args.argv is None else args.argv, BG.SCRIPT),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "model": BG._model_label(args), "methods": [m.name for m in methods],
              "environment": C.environment(), "settings": {"height": args.height, "width": args.width, "prompt": args.prompt,
              "seed": args.seed, "repeats": args.repeats, "warmup": args.warmup}, "profiles": {}}  # fmt: skip
    pictures = {}
    with tempfile.TemporaryDirectory(prefix="glance-bench-lora-") as lora_dir:
        for name in profile_names:
            bench = BG.Bench(args, name, Path(lora_dir))
            try:
                say(f"[{bench.profile.name}] loading {bench.model_label} ...")
                bench.open(methods)
                report["device"] = C.describe_device(bench.device, args.vram_cap)
                ref = bench.run_method(reference) if reference not in methods else None
                runs = {m.name: [] for m in methods}
                for i in range(args.warmup + args.repeats):
                    for method in methods:
                        run = bench.run_method(method)
                        if i >= args.warmup:
                            runs[method.name].append(run)
                            say(f"[{bench.profile.name}] {method.name} {i - args.warmup + 1}/{args.repeats}: {C.fmt_seconds(run['total_seconds'])}")
                ref_image = (ref or runs[REFERENCE][0])["image"]
                rows = {}
                for method in methods:
                    first = runs[method.name][0]
                    planned = _planned_pcie(args, bench.profile, method)
                    denoise = [r["stages"]["denoise"] for r in runs[method.name]]
                    rows[method.name] = {
                        "transformer_calls": first["transformer_calls"], "steps": len(first["sigmas"]) - 1,
                        "total_seconds": C.median([r["total_seconds"] for r in runs[method.name]]),
                        "denoise_seconds": C.median([d["seconds"] for d in denoise]),
                        "peak_bytes": max(d["peak_bytes"] for d in denoise),
                        "reserved_bytes": None if bench.device.type != "cuda" else max(d["reserved_bytes"] for d in denoise),
                        "planned_pcie_bytes_per_image": planned, "psnr_to_base50_db": psnr(first["image"], ref_image),
                        "sigmas": first["sigmas"],
                    }  # fmt: skip
                    pictures[(bench.profile.name, method.name)] = first["image"]
                report["profiles"][bench.profile.name] = {"description": bench.profile.description, "methods": rows,
                                                          "lora_reports": [r.to_dict() for r in bench.glance.lora_reports],
                                                          "notes": bench.notes}  # fmt: skip
            finally:
                bench.close()
    folder, stem = C.output_paths(args.out, (args.name or C.result_stem("generate", C.device_for(bench.profile), BG._model_tag(args), args.vram_cap)) + "-methods")
    grid = _grid(pictures, report, folder / f"{stem}.png")
    report["files"] = {"json": f"{stem}.json", "markdown": f"{stem}.md", "grid_png": grid.name}
    text = markdown(report)
    C.write_json(folder / f"{stem}.json", report)
    C.write_text(folder / f"{stem}.md", text)
    if not args.quiet:
        print(text)
    report["paths"] = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "png": [grid]}
    return report


def _planned_pcie(args, profile, method) -> int:
    """The planner's weight bytes over PCIe per image for this method (0 on a CPU run)."""
    from glance_lite.plan import plan

    model = C.arch_configs(C.ARCHS[args.arch].with_layers(args.num_layers)) if args.random_weights else args.model
    return plan(model, profile, args.height, args.width, method=method.name, true_cfg_scale=args.true_cfg_scale).pcie.per_image


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Sampling methods side by side: {report['model']}", "", f"- command: `{report['command']}`",
             f"- date: {report['date']}; device: {report['device']['name']}",
             f"- {s['height']}x{s['width']}, seed {s['seed']} (one noise for every method), prompt \"{s['prompt']}\"; "
             f"median of {s['repeats']} timed run(s) after {s['warmup']} warm-up run(s), methods alternating",
             f"- PSNR: each method's picture against the {REFERENCE} picture from the same noise (99 = identical)"]  # fmt: skip
    env = report["environment"]
    if "load_average_at_start" in env:
        lines.append(f"- machine load average at start (1/5/15 min): {env['load_average_at_start']}")
    for name, profile in report["profiles"].items():
        lines += ["", f"## Profile `{name}`", "", profile["description"], ""]
        header = ["method", "steps", "transformer calls", "end to end", "denoise stage", "denoise peak", "PCIe / image (plan)", f"PSNR to {REFERENCE}"]
        rows = [[m, str(r["steps"]), str(r["transformer_calls"]), C.fmt_seconds(r["total_seconds"]), C.fmt_seconds(r["denoise_seconds"]),
                 C.fmt_bytes(r["peak_bytes"]), C.fmt_bytes(r["planned_pcie_bytes_per_image"]), f"{r['psnr_to_base50_db']:.1f} dB"]
                for m, r in profile["methods"].items()]  # fmt: skip
        lines += [C.markdown_table(header, rows), ""]
        lines += [f"- LoRA {r['adapter']}: {r['applied_layers']} layers at scale {r['scale']:g} (compat {r['compat']})" for r in profile["lora_reports"]]
        lines += [f"- {note}" for note in profile["notes"]]
    lines += ["", f"![the methods' pictures]({report['files']['grid_png']})"]
    return "\n".join(lines) + "\n"


def _grid(pictures: dict, report: dict, path: Path) -> Path:
    """One row per profile, one column per method, each picture labelled (method, calls, PSNR)."""
    from PIL import Image, ImageDraw

    profiles, methods = list(report["profiles"]), report["methods"]
    cell = max(192, next(iter(pictures.values())).width)
    label = 34
    sheet = Image.new("RGB", (cell * len(methods), (cell + label) * len(profiles)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, profile in enumerate(profiles):
        for col, method in enumerate(methods):
            image = pictures[(profile, method)].resize((cell, cell), Image.NEAREST)
            x, y = col * cell, row * (cell + label)
            sheet.paste(image, (x, y + label))
            r = report["profiles"][profile]["methods"][method]
            draw.text((x + 4, y + 2), f"{profile}: {method}", fill="black")
            draw.text((x + 4, y + 16), f"{r['transformer_calls']} calls, {r['psnr_to_base50_db']:.1f} dB", fill="black")
    sheet.save(path)
    return path
