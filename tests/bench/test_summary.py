"""From trial records to rows, comparisons and the report: the numbers the table shows are the
ones the trials produced, and the verdicts follow from them."""

import pytest

from slimtrain.bench.report import render, results_table, sweep_table, targets
from slimtrain.bench.summary import adamw_row, compare, reference_pairs, summarize

from .records import MIB, method, skipped, trial

ADAMW_STATE = 14 * MIB


def bench_records():
    return (method("adamw", {1e-3: 130.0, 2e-3: 120.0, 5e-3: 125.0}, 2e-3, 124.0, state_mib=14.0)
            + method("torch-adamw", {1e-3: 131.0, 2e-3: 121.0, 5e-3: 126.0}, 2e-3, 122.0, state_mib=14.0,
                     kind="peer", group="adamw", reference_of="adamw")
            + method("galore-adamw", {5e-3: 150.0, 1e-2: 140.0, 2e-2: "diverged"}, 1e-2, 141.0,
                     state_mib=10.0, tokens_per_s=5200.0)
            + method("galore-torch-adamw", {5e-3: 152.0, 1e-2: 139.0, 2e-2: 160.0}, 1e-2, 140.5,
                     state_mib=10.5, kind="peer", group="galore-adamw", reference_of="galore-adamw",
                     tokens_per_s=4800.0)
            + method("apollo-mini:rest=adafactor", {5e-3: 126.0, 1e-2: 121.0, 2e-2: 119.0}, 2e-2, 122.0,
                     state_mib=0.05, group="apollo-mini:rest=adafactor")
            + method("frugal", {5e-3: "diverged", 1e-2: "diverged", 2e-2: "diverged"}, None, None)
            + [skipped("bnb-adamw8bit", "bitsandbytes is not installed (pip install bitsandbytes)")])


def test_rows_take_the_best_lr_of_the_sweep_and_the_seeds_at_it():
    rows = {r.method: r for r in summarize(bench_records())}
    g = rows["galore-adamw"]
    assert g.lr == 1e-2 and g.ppl == {0: 140.0, 1: 141.0} and g.sweep[2e-2] == "diverged"
    assert g.ppl_mean == pytest.approx(140.5) and g.spread == pytest.approx(1.0) and not g.edge
    assert rows["apollo-mini:rest=adafactor"].edge  # best at the top of its range
    assert rows["frugal"].status == "diverged" and rows["frugal"].note == "it diverged"
    assert rows["bnb-adamw8bit"].status == "skipped" and "not installed" in rows["bnb-adamw8bit"].note
    assert list(rows) == ["adamw", "torch-adamw", "galore-adamw", "galore-torch-adamw",
                          "apollo-mini:rest=adafactor", "frugal", "bnb-adamw8bit"]


def test_ties_go_to_the_smaller_lr_and_a_failed_seed_is_a_note():
    records = method("q-galore", {5e-3: 150.0, 1e-2: 150.0, 2e-2: 160.0}, None, None)
    records.append(trial("q-galore", 5e-3, 1, None, stage="seed", status="failed"))
    (row,) = summarize(records)
    assert row.lr == 5e-3 and row.ppl == {0: 150.0} and "seed 1 failed" in row.note


def test_comparisons_use_the_larger_seed_spread_as_noise():
    rows = {r.method: r for r in summarize(bench_records())}
    c = compare(rows["galore-adamw"], rows["galore-torch-adamw"])  # 140.5 vs 139.75, spreads 1.0 / 1.5
    assert c.verdict == "within noise" and c.matches
    assert c.noise == pytest.approx(1.5 / 139.75)
    worse = compare(rows["galore-adamw"], rows["adamw"])  # 140.5 vs 122.0
    assert worse.verdict == "worse" and not worse.matches and worse.delta == pytest.approx(18.5 / 122)
    assert worse.noise == pytest.approx(4.0 / 122)  # adamw's seeds: 120 and 124
    better = compare(rows["adamw"], rows["galore-adamw"])
    assert better.verdict == "better" and better.matches


def test_adamw_is_the_strongest_adamw_baseline():
    rows = summarize(bench_records())
    assert adamw_row(rows).method == "torch-adamw"  # 121.5 against slimtrain adamw's 122.0
    pairs = [(a.method, b.method) for a, b in reference_pairs(rows)]
    assert pairs == [("adamw", "torch-adamw"), ("galore-adamw", "galore-torch-adamw")]


def test_the_table_says_when_adamw_wins():
    rows = summarize(bench_records())
    table = "\n".join(results_table(rows, ADAMW_STATE))
    galore = next(line for line in table.splitlines() if line.startswith("| galore-adamw "))
    assert "AdamW better" in galore and "+15.6%" in galore  # vs torch-adamw, 121.5
    assert "0.714" in galore  # 10 MiB of state against AdamW's 14
    assert "| frugal (label of frugal) | diverged: it diverged |" in table
    assert "skipped: bitsandbytes is not installed" in table
    apollo = next(line for line in table.splitlines() if line.startswith("| apollo-mini:rest=adafactor"))
    assert "0.02 (edge)" in apollo and "within noise" in apollo


def test_targets_are_judged_from_the_numbers():
    rows = summarize(bench_records())
    text = "\n".join(targets(rows, ADAMW_STATE))
    galore = next(line for line in text.splitlines() if line.startswith("| galore-adamw "))
    # perplexity within noise, state 10 ≤ 10.5 MiB, 5200 ≥ 4800 tokens/s
    assert galore.count("✓") == 3 and "✗" not in galore
    assert "✓ apollo-mini:rest=adafactor: 0.004× AdamW's state" in text
    assert "galore-adamw:" not in text.split("≤ 1/3")[1]  # 0.71× is not a ≤ 1/3 candidate


def test_a_recipe_behind_its_reference_fails_the_target():
    records = (method("fira", {5e-3: 150.0, 1e-2: 140.0, 2e-2: 145.0}, 1e-2, 140.2, state_mib=11.0,
                      tokens_per_s=4000.0)
               + method("fira-adamw", {5e-3: 149.0, 1e-2: 130.0, 2e-2: 135.0}, 1e-2, 130.1, state_mib=10.0,
                        kind="peer", group="fira", reference_of="fira", tokens_per_s=4500.0))
    line = next(x for x in targets(summarize(records), ADAMW_STATE) if x.startswith("| fira "))
    assert line.count("✗") == 3 and "worse" in line


def test_the_sweep_table_marks_the_chosen_lr():
    lines = sweep_table(summarize(bench_records()))
    galore = next(line for line in lines if line.startswith("| galore-adamw "))
    assert "**lr 0.01: 140.00**" in galore and "lr 0.02: diverged" in galore
    assert not any("bnb-adamw8bit" in line for line in lines)


def test_the_report_names_its_command_and_machine():
    meta = dict(command="slimtrain bench --methods adamw", settings=dict(
        model="tiny", batch_size=16, seq_len=128, precision="fp32", weight_decay=0.0, eval_batches=8,
        trials=3, seeds=[0, 1], threads=1, jobs=2), environment=dict(
        versions={"torch": "2.13.0", "peft": "not installed"},
        machine=dict(cpu="a CPU", cores=2, memory_bytes=24 * 2**30, system="Linux", gpu=None)),
        load_average=dict(start=[1.0, 1.0, 1.0], end=[2.0, 2.0, 2.0]), wall_seconds=600.0, trials_run=2,
        trials_reused=20, trial_seconds=1500.0, steps=293, params=1_840_000, data="the embedded corpus",
        adamw_state_bytes=ADAMW_STATE)
    text = render(summarize(bench_records()), meta)
    assert "```\nslimtrain bench --methods adamw\n```" in text
    assert "a CPU, 2 cores, 24 GiB" in text and "torch 2.13.0" in text and "peft" not in text
    assert "600,064 training tokens per trial" in text
    # what all trials cost is stated whichever invocation ran them
    assert "22 trials took 25.0 trial-minutes in all, 12 min at 2 at a time" in text
    assert "this invocation ran 2 in 10.0 min (20 reused from an earlier invocation)" in text
