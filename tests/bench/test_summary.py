"""From trial records to rows, comparisons and the report: the numbers the table shows are the
ones the trials produced, and the verdicts follow from them."""

import pytest

from slimtrain.bench.report import render, results_table, sweep_table, targets
from slimtrain.bench.summary import adamw_row, compare, reference_pairs, summarize

from .records import MIB, method, skipped, trial, walked

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
    assert g.lr == 1e-2 and g.ppl == {0: 140.0, 1: 141.0} and g.sweep[(2e-2, 0)] == "diverged"
    assert g.ppl_mean == pytest.approx(140.5) and g.spread == pytest.approx(1.0) and not g.edge
    assert g.outcome.ended == "bracketed" and g.outcome.used == 3  # the seed-1 check is not counted
    # Best at the top of the lrs tried (0.02 > 0.01 > 0.005), its neighbour 0.05 never tried, and
    # its seeds (119, 122) differ by more than its lead over 0.01 (121): noisy, and these records
    # (of the old three-trial walk) stop before the reruns the protocol asks for — an edge.
    apollo = rows["apollo-mini:rest=adafactor"].outcome
    assert apollo.edge and apollo.ended == "budget" and apollo.noisy
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
    assert "0.02 (edge: budget)" in apollo and "within noise" in apollo
    assert "| 120.50 ± 3.00 | 119.00 / 122.00 |" in apollo  # mean ± (max − min), then each seed


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


def test_the_report_names_its_command_machine_corpus_and_protocol():
    meta = dict(command="slimtrain bench --methods adamw", settings=dict(
        model="tiny", batch_size=16, seq_len=128, precision="fp32", weight_decay=0.0, eval_batches=8,
        trials=3, seeds=[0, 1], centers="bench", threads=1, jobs=2), environment=dict(
        versions={"torch": "2.13.0", "peft": "not installed"},
        machine=dict(cpu="a CPU", cores=2, memory_bytes=24 * 2**30, system="Linux", gpu=None)),
        load_average=dict(start=[1.0, 1.0, 1.0], end=[2.0, 2.0, 2.0]), wall_seconds=600.0, trials_run=2,
        trials_reused=20, trial_seconds=1500.0, steps=293, params=1_840_000, data="corpus.jsonl",
        corpus=dict(name="`corpus.jsonl` (text field `text`)", fingerprint="0123456789abcdef",
                    fingerprint_of="the trainer's data fingerprint"),
        adamw_state_bytes=ADAMW_STATE)
    text = render(summarize(bench_records()), meta)
    assert "```\nslimtrain bench --methods adamw\n```" in text
    assert "a CPU, 2 cores, 24 GiB" in text and "torch 2.13.0" in text and "peft" not in text
    assert "600,064 training tokens per trial" in text
    assert "data `corpus.jsonl` (text field `text`), fingerprint `0123456789abcdef` (the trainer's" in text
    assert "budget of 3 trials" in text and "every seed (0, 1)" in text
    # what all trials cost is stated whichever invocation ran them
    assert "22 trials took 25.0 trial-minutes in all, 12 min at 2 at a time" in text
    assert "this invocation ran 2 in 10.0 min (20 reused from an earlier invocation)" in text


def test_the_corpus_is_named_with_the_trainers_fingerprint(tmp_path):
    import os

    from slimtrain.bench.environment import corpus
    from slimtrain.data import fingerprint

    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "a document"}\n')
    named = corpus(str(data), "body")
    assert named["fingerprint"] == fingerprint(data) and "text field `body`" in named["name"]
    data.write_text('{"text": "another document"}\n')
    os.utime(data, ns=(1, 1))
    assert corpus(str(data), "body")["fingerprint"] != named["fingerprint"]  # other data, other key


def test_a_report_of_before_the_fingerprint_still_renders():
    meta_without = dict(command="c", settings=dict(
        model="tiny", batch_size=16, seq_len=128, precision="fp32", weight_decay=0.0, eval_batches=8,
        trials=3, seeds=[0, 1], threads=1, jobs=1), environment=dict(versions={}, machine=dict(
            cpu="a CPU", cores=2, system="Linux")), wall_seconds=1.0, trials_run=1, trials_reused=0,
        trial_seconds=1.0, steps=1, params=1, data="the embedded corpus", adamw_state_bytes=ADAMW_STATE)
    assert "the embedded corpus;" in render(summarize(bench_records()), meta_without)


def tilted(best, tilt):
    """An optimum at ``best``; seed 0 favours larger lrs by ``tilt`` per decade, seed 1 smaller."""
    import math

    def loss(lr, seed):
        x = math.log10(lr / best)
        return 4.0 + 0.1 * x * x + {0: -tilt, 1: tilt}.get(seed, 0.0) * x
    return loss


def test_a_noisy_method_is_chosen_on_the_two_seed_mean_and_the_table_says_so():
    import math

    quiet = lambda lr, seed: 4.5 + math.log10(lr / 2e-3) ** 2 + 0.001 * seed  # noqa: E731
    records = walked("apollo-mini", tilted(5e-3, 0.1)) + walked("adamw", quiet, center=2e-3, state_mib=14.0)
    rows = {r.method: r for r in summarize(records, seeds=[0, 1, 2])}
    apollo = rows["apollo-mini"]
    # the same choice as the walk's: seed 0 alone would take 0.02
    assert apollo.lr == 5e-3 and apollo.outcome.noisy and not apollo.edge
    assert set(apollo.ppl) == {0, 1, 2} and apollo.outcome.used == 9
    line = next(x for x in sweep_table(list(rows.values()), trials=10) if x.startswith("| apollo-mini "))
    assert "| 0.01 | 9 / 10 | bracketed | mean of seeds 0, 1 (noisy) |" in line
    assert "**lr 0.005 · seed 1:" in line and "lr 0.02: " in line  # the seed-1 reruns are named
    quiet = next(x for x in sweep_table(list(rows.values()), trials=10) if x.startswith("| adamw "))
    assert "| bracketed | seed 0 |" in quiet
    assert summarize(records) == summarize(records, seeds=[0, 1, 2])  # seeds read from the records


def test_the_edge_flag_disappears_once_the_walk_brackets_the_best():
    import math

    loss = lambda lr, seed: 4.0 + math.log10(lr / 5e-2) ** 2  # noqa: E731
    full = walked("galore-adamw", loss)
    assert [(r["lr"], r["seed"]) for r in full][:4] == [(1e-2, 0), (2e-2, 0), (5e-2, 0), (1e-1, 0)]
    cut = full[:3] + [trial("galore-adamw", 5e-2, 1, math.exp(loss(5e-2, 1)), stage="seed")]
    (row,) = summarize(cut)  # as the old three-trial walk ended: best at the top rung tried
    assert row.edge and "| 0.05 (edge: budget) |" in results_table([row], ADAMW_STATE)[2]
    (row,) = summarize(full)
    assert row.lr == 5e-2 and not row.edge and row.outcome.ended == "bracketed"
    assert "| 0.05 |" in results_table([row], ADAMW_STATE)[2]


def test_within_noise_means_the_seed_ranges_overlap():
    def row(name, ppls, **kw):
        records = [trial(name, 1e-2, seed, p, stage="sweep" if seed == 0 else "seed", **kw)
                   for seed, p in enumerate(ppls)]
        (r,) = summarize(records)
        return r

    base = row("adamw", [105.0, 110.0, 110.0])
    # means 101.7 and 108.3 differ by more than either spread (5), but the ranges meet at 105
    assert compare(row("a", [100.0, 100.0, 105.0]), base).verdict == "within noise"
    # means 104.6 and 108.3 differ by less than the larger spread (5), but the ranges do not meet
    apart = row("b", [104.0, 104.9, 104.9])
    assert compare(apart, base).verdict == "better" and compare(base, apart).verdict == "worse"
    table = "\n".join(results_table([base, apart], ADAMW_STATE))
    assert "better than AdamW" in table and "within noise" not in table
