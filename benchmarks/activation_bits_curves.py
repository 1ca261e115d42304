"""Loss curves with compressed saved activations (``--activation-bits 8|fp8``) next to the exact run.

    python benchmarks/activation_bits_curves.py [--models tiny,small] [--steps tiny=120,small=60]
                                                [--batch-size 8] [--seq-len 128] [--seeds 0,1]
                                                [--eval-every 20] [--eval-batches 8] [--threads 1]

For each preset, each seed and each of ``--activation-bits none, 8, fp8`` (interleaved: seed by
seed, the three settings one after the other), one ``slimtrain pretrain`` process trains on the
embedded corpus with the trainer's defaults (galore-adamw, its lr, cosine schedule, fp32 on CPU,
the chunked loss) and identical settings except the bits; the same seed means the same initial
weights and data order, so a seed's three runs differ only by the codes' rounding in backward.
Recorded from each run's ``metrics.jsonl``: the train loss of every step, the validation loss at
every ``--eval-every`` steps and at the end (the same fixed ``--eval-batches`` batches each time)
and the step time (the trainer's own clock, evaluation excluded; the median over steps 2..N).

The verdict (per preset and bits, on the final validation loss): "within two-seed noise" when
|mean_bits − mean_none| ≤ spread_none, the spread being |seed₀ − seed₁| of the uncompressed run's
final validation losses (with more seeds: max − min). The same rule is also applied at every
evaluation (the "evals within" column). The paired difference (bits − none at the same seed) is
printed besides: it isolates the compression's effect from the seed's.

Written to ``benchmarks/activation_bits_curves/`` (``--out``): ``results.md`` (the command and the
table), ``curves.json`` (every run's settings, curves and step times; rewritten after each run so a
cut-short invocation keeps what finished) and ``curves.png`` (matplotlib, when installed).

Why these sizes: on one CPU thread (the other core busy) the exact step of batch 8 × 128 took
~0.5 s (tiny) and ~2.2 s (small), the 8-bit one 4.6× and 3.0× that, fp8 2.9× and 1.4× (encode
and decode are plain torch ops); with ~20 s of process start, evaluation and final checkpoint per
run, 120 tiny steps and 60 small ones make the default 18 runs take ~50 minutes (48 measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BITS = ("none", "8", "fp8")
DEFAULT_STEPS = {"tiny": 120, "small": 60}


def parse_steps(text: str, models: list[str]) -> dict[str, int]:
    """``120`` (every preset) or ``tiny=120,small=60`` (the others: DEFAULT_STEPS, else 60)."""
    if "=" not in text:
        return {m: int(text) for m in models}
    given = dict(part.split("=", 1) for part in text.split(","))
    return {m: int(given.get(m, DEFAULT_STEPS.get(m, 60))) for m in models}


def step_seconds(records: list[dict], tokens_per_step: int) -> list[float]:
    """Per-step times from the cumulative ``tokens_per_s`` (training time only, no evaluation)."""
    elapsed = [r["step"] * tokens_per_step / r["tokens_per_s"] for r in records if r["tokens_per_s"]]
    return [b - a for a, b in zip(elapsed, elapsed[1:])]


def train(model: str, bits: str, seed: int, steps: int, args, work: Path) -> dict:
    out = work / f"{model}-{bits}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "slimtrain", "pretrain", "--model", model,
           "--activation-bits", bits, "--seed", str(seed), "--steps", str(steps),
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--eval-every", str(args.eval_every), "--eval-batches", str(args.eval_batches),
           "--log-every", "1", "--save-every", str(steps), "--keep-last", "1",
           "--threads", str(args.threads), "--device", args.device, "--out", str(out)]
    if args.optimizer:
        cmd += ["--optimizer", args.optimizer]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{model} bits {bits} seed {seed}: "
                           + (done.stderr.strip().splitlines() or ["failed"])[-1][:200])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    summary = json.loads((out / "summary.json").read_text())
    times = step_seconds(records, args.batch_size * args.seq_len)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # only the curves are kept
    return {"model": model, "bits": bits, "seed": seed, "steps": steps,
            "train": [[r["step"], r["loss"]] for r in records if r.get("loss") is not None],
            "val": [[r["step"], r["val_loss"]] for r in records if r.get("val_loss") is not None],
            "final_val": summary["val_loss"], "final_train": summary["train_loss"],
            "s_per_step": statistics.median(times) if times else summary["seconds"] / steps,
            "train_seconds": summary["seconds"], "wall_seconds": wall,
            "peak_rss": summary.get("peak_memory_bytes")}


def spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else float("nan")


def table(runs: list[dict], models: list[str], seeds: list[int]) -> list[str]:
    head = " | ".join(f"val s{s}" for s in seeds)
    lines = [f"| preset | bits | {head} | mean | spread (none) | Δ mean vs none | paired Δ "
             "(same seed) | verdict (final) | evals within | s/step | × none |",
             "|---|---|" + "---:|" * len(seeds) + "---:|---:|---:|---:|---|---:|---:|---:|"]
    for model in models:
        by = {(r["bits"], r["seed"]): r for r in runs if r["model"] == model}
        none = [by[("none", s)] for s in seeds if ("none", s) in by]
        if not none:
            continue
        mean_none = statistics.mean(r["final_val"] for r in none)
        spread_none = spread([r["final_val"] for r in none])
        none_s = statistics.median(r["s_per_step"] for r in none)
        for bits in BITS:
            rs = [by[(bits, s)] for s in seeds if (bits, s) in by]
            if not rs:
                continue
            vals = [f"{by[(bits, s)]['final_val']:.4f}" if (bits, s) in by else "–" for s in seeds]
            mean = statistics.mean(r["final_val"] for r in rs)
            sec = statistics.median(r["s_per_step"] for r in rs)
            if bits == "none":
                d, paired, verdict, within = "–", "–", "(reference)", "–"
            else:
                d = f"{mean - mean_none:+.4f}"
                paired = ", ".join(f"{by[(bits, s)]['final_val'] - by[('none', s)]['final_val']:+.4f}"
                                   for s in seeds if (bits, s) in by and ("none", s) in by)
                complete = len(rs) == len(seeds) == len(none)
                ok = abs(mean - mean_none) <= spread_none
                verdict = ("within two-seed noise" if ok else "OUTSIDE two-seed noise") + \
                    ("" if complete else " (seeds missing)")
                within = evals_within(by, bits, seeds)
            lines.append(f"| {model} | {bits} | {' | '.join(vals)} | {mean:.4f} | "
                         f"{spread_none:.4f} | {d} | {paired} | {verdict} | {within} | "
                         f"{sec:.3f} | {sec / none_s:.2f} |")
    return lines


def evals_within(by: dict, bits: str, seeds: list[int]) -> str:
    """At how many evaluations |mean_bits − mean_none| ≤ the exact run's spread there."""
    try:
        curves = {b: [dict(map(tuple, by[(b, s)]["val"])) for s in seeds] for b in ("none", bits)}
    except KeyError:
        return "–"
    steps = sorted(set.intersection(*(set(c) for cs in curves.values() for c in cs)))
    ok = 0
    for step in steps:
        none = [c[step] for c in curves["none"]]
        mine = [c[step] for c in curves[bits]]
        ok += abs(statistics.mean(mine) - statistics.mean(none)) <= spread(none)
    return f"{ok}/{len(steps)}"


def plot(runs: list[dict], models: list[str], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    colors = {"none": "tab:blue", "8": "tab:orange", "fp8": "tab:green"}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for j, model in enumerate(models):
        mine = [r for r in runs if r["model"] == model]
        seeds = sorted({r["seed"] for r in mine})
        for r in mine:
            style = styles[seeds.index(r["seed"]) % len(styles)]
            label = f"bits {r['bits']}, seed {r['seed']}"
            steps, loss = zip(*r["train"])
            axes[0][j].plot(steps, loss, style, color=colors[r["bits"]], lw=1, label=label)
            steps, loss = zip(*r["val"])
            axes[1][j].plot(steps, loss, style, color=colors[r["bits"]], marker="o", ms=3,
                            label=label)
        axes[0][j].set_title(f"{model}: train loss per step")
        axes[1][j].set_title(f"{model}: validation loss")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        if mine:  # the tail, where the settings would part
            last = [v for r in mine for _, v in r["val"][1:]]
            if last:
                axes[1][j].set_ylim(min(last) - 0.05, max(last) + 0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(runs: list[dict], models: list[str], seeds: list[int], settings: dict,
                  out: Path) -> list[str]:
    """results.md: the command, the settings and the table of what has finished so far."""
    steps = settings["steps"]
    lines = table(runs, models, seeds)
    md = [f"```\n{settings['command']}\n```", "",
          f"Embedded corpus, `slimtrain pretrain` defaults ({settings['optimizer']}, its lr, cosine, "
          f"fp32, chunked loss) but batch {settings['batch_size']} × {settings['seq_len']}, steps "
          + ", ".join(f"{m} {n}" for m, n in steps.items())
          + f", validation loss every {settings['eval_every']} steps on {settings['eval_batches']} "
          f"fixed batches, {settings['threads']} thread(s), {settings['device']}; seeds "
          f"{', '.join(map(str, seeds))}. "
          "Verdict: within two-seed noise when |mean_bits − mean_none| ≤ spread_none "
          "(|seed₀ − seed₁| of the uncompressed final validation loss); evals within = at how many "
          "evaluations the same rule holds; paired Δ = bits − none at the same seed (same weights "
          "and data order); s/step = median training step (evaluation excluded), × none = its ratio.",
          "", *lines, ""]
    (out / "results.md").write_text("\n".join(md))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,small")
    parser.add_argument("--steps", default=",".join(f"{k}={v}" for k, v in DEFAULT_STEPS.items()),
                        help="N for every preset, or PRESET=N,... (default tiny=120,small=60)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--optimizer", default=None, help="default: the trainer's (galore-adamw)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(HERE / "activation_bits_curves"))
    parser.add_argument("--work", default=None, help="where the run directories go (default: a "
                        "temporary directory, deleted at the end)")
    args = parser.parse_args()
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = parse_steps(args.steps, models)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/activation_bits_curves.py",
                        *map(shlex.quote, sys.argv[1:])])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bits-curves-"))
    settings = {"command": command, "steps": steps, "batch_size": args.batch_size,
                "seq_len": args.seq_len, "seeds": seeds, "eval_every": args.eval_every,
                "eval_batches": args.eval_batches, "optimizer": args.optimizer or "galore-adamw",
                "threads": args.threads, "device": args.device}
    runs: list[dict] = []
    print(f"{command}\n{settings}\n", flush=True)
    try:
        for model in models:
            for seed in seeds:
                for bits in BITS:
                    try:
                        r = train(model, bits, seed, steps[model], args, work)
                    except RuntimeError as err:
                        print(f"failed: {err}", flush=True)
                        continue
                    runs.append(r)
                    print(f"{model} bits {bits:>4} seed {seed}: final val {r['final_val']:.4f}, "
                          f"train {r['final_train']:.4f}, {r['s_per_step']:.3f} s/step, "
                          f"{r['wall_seconds']:.0f} s wall", flush=True)
                    (out / "curves.json").write_text(json.dumps({"settings": settings, "runs": runs},
                                                                indent=1))
                    write_results(runs, models, seeds, settings, out)  # partial until the end
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    lines = write_results(runs, models, seeds, settings, out)
    if runs and plot(runs, models, out / "curves.png"):
        md_plot = "curves.png"
    else:
        md_plot = None
    print("\n".join(lines))
    print(f"\nwritten: {out / 'results.md'}, {out / 'curves.json'}"
          + (f", {out / md_plot}" if md_plot else ""))


if __name__ == "__main__":
    main()
