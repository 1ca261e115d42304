"""The benchmark's figures: validation loss against tokens, memory against perplexity, and the
memory of each method by part. slimtrain recipes are drawn solid, other libraries dashed."""

from __future__ import annotations

from pathlib import Path

from .summary import Row

MIB = 2**20
FILES = ("loss_vs_tokens.png", "memory_vs_ppl.png", "memory_breakdown.png")


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _styles(rows: list[Row]) -> dict[str, dict]:
    """A hue per group — a recipe and its reference implementations share one, dark for slimtrain
    (solid line), light for the other library (dashed) — so pairs read at a glance."""
    import matplotlib

    colors = matplotlib.colormaps["tab20"].colors
    groups = list(dict.fromkeys(r.group for r in rows))
    return {r.method: dict(color=colors[(2 * groups.index(r.group) + (r.kind != "slimtrain")) % len(colors)],
                           ls="-" if r.kind == "slimtrain" else "--") for r in rows}


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)  # pyplot keeps every figure alive until it is closed


def loss_vs_tokens(rows: list[Row], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    finals, styles = [], _styles(rows)
    for r in rows:
        if r.ok and r.curve:
            tokens, loss = zip(*r.curve)
            ax.plot(tokens, loss, marker="o", ms=2.5, lw=1.2, label=f"{r.method} (lr {r.lr:g})",
                    **styles[r.method])
            finals.append(loss[-1])
    if finals:  # zoom on where the methods separate: the last third of training
        values = [v for r in rows if r.ok for t, v in r.curve if t >= r.curve[-1][0] / 3]
        ax.set_ylim(min(finals) - 0.05, max(values) + 0.05)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if finals:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(plt, fig, path)


def memory_vs_ppl(rows: list[Row], path: Path, adamw_state: int, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    ok, styles = [r for r in rows if r.ok], _styles(rows)
    for r in ok:
        x = r.state_bytes / adamw_state
        low, high = min(r.ppl.values()), max(r.ppl.values())
        style = styles[r.method]
        ax.errorbar([x], [r.ppl_mean], yerr=[[r.ppl_mean - low], [high - r.ppl_mean]], capsize=3, ms=6,
                    fmt="o" if r.kind == "slimtrain" else "s", color=style["color"], label=r.method)
    ax.axvline(1 / 3, color="grey", lw=0.8, ls=":")
    ax.text(1 / 3, ax.get_ylim()[1], " 1/3 of AdamW's state", fontsize=7, va="top", color="grey")
    ax.set_xlabel("optimizer state (× AdamW's)")
    ax.set_ylabel("validation perplexity (mean over seeds; bars: min–max)")
    ax.set_title(title + "\n● slimtrain  ■ other libraries / baselines", fontsize=10)
    ax.grid(alpha=0.3)
    if ok:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(plt, fig, path)


def memory_breakdown(rows: list[Row], path: Path, title: str) -> None:
    plt = _plt()
    ok = [r for r in rows if r.ok]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(ok) + 1.6), dpi=110)
    names = [r.method for r in ok]
    left = [0.0] * len(ok)
    parts = (("weights", "weight_bytes", "#4c72b0"), ("gradients", "gradient_bytes", "#dd8452"),
             ("optimizer states", "state_bytes", "#55a868"))
    for part, key, color in parts:
        values = [getattr(r, key) / MIB for r in ok]
        ax.barh(names, values, left=left, label=part, color=color)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("MiB (tensor bytes)")
    ax.set_title(title, fontsize=10, pad=26)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, frameon=False)
    ax.grid(alpha=0.3, axis="x")
    _save(plt, fig, path)


def draw_all(rows: list[Row], out: Path, adamw_state: int, title: str) -> list[Path]:
    paths = [out / name for name in FILES]
    loss_vs_tokens(rows, paths[0], title)
    memory_vs_ppl(rows, paths[1], adamw_state, title)
    memory_breakdown(rows, paths[2], title)
    return paths
