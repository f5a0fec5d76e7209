"""Figures researchers read MPQ results by: accuracy-vs-cost fronts and per-layer bit charts."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def _pyplot():
    """matplotlib's pyplot on the file-only Agg back end, imported when a figure is drawn (it
    takes a second a job that draws nothing should not pay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

STYLES = {  # method -> (marker, color); unknown methods cycle through the rest
    "fp32": ("*", "black"), "uniform": ("s", "tab:gray"), "ilp": ("o", "tab:blue"),
    "greedy": ("^", "tab:orange"), "ompq": ("D", "tab:green"),
}
EXTRA_MARKERS = ["v", "P", "X", "<", ">", "h"]
EXTRA_COLORS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def pareto_front(cost, acc) -> list[int]:
    """Indices of points no other point beats (lower or equal cost and higher or equal accuracy)."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -acc[i]))
    front, best = [], float("-inf")
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def _method_label(row) -> str:
    if row["policy"] == "fp32":
        return "fp32"
    return row["search"] if not row.get("importance") else f"{row['search']} ({row['importance']})"


def _style(method: str, seen: dict):
    base = method.split(" ")[0]
    if base in STYLES:
        return STYLES[base]
    if base not in seen:
        k = len(seen)
        seen[base] = (EXTRA_MARKERS[k % len(EXTRA_MARKERS)], EXTRA_COLORS[k % len(EXTRA_COLORS)])
    return seen[base]


def _save(fig, outputs) -> list[Path]:
    """Write the figure to each path, in the format its suffix names (.png, .svg), atomically."""
    outs = []
    for path in map(Path, outputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=150, bbox_inches="tight")
        tmp.replace(path)
        outs.append(path)
    _pyplot().close(fig)
    return outs


def plot_front(summary: pd.DataFrame, x: str, xlabel: str, outputs, title: str) -> list[Path]:
    """Top-1 against a cost column; the Pareto front of the quantized policies is drawn as a line.

    FP32 is far to the right on a linear axis, so it is drawn as a horizontal reference line.
    """
    fig, ax = _pyplot().subplots(figsize=(7.5, 5))
    quant = summary[summary["policy"] != "fp32"].reset_index(drop=True)
    fp32 = summary[summary["policy"] == "fp32"]
    seen: dict = {}
    for method, group in quant.groupby(quant.apply(_method_label, axis=1), sort=True):
        marker, color = _style(method, seen)
        ax.scatter(group[x], group["top1"], s=70, marker=marker, color=color, label=method, zorder=3,
                   edgecolors="white", linewidths=0.6)
    fronts = quant["front"].fillna("").astype(str) if "front" in quant else None
    labels = list(quant["policy"])
    if fronts is not None:   # a sweep: its points joined in cost order, named once at the cheapest
        for name, group in quant[fronts != ""].groupby(fronts[fronts != ""], sort=True):
            group = group.sort_values(x)
            _, color = _style(_method_label(group.iloc[0]), seen)
            ax.plot(group[x], group["top1"], color=color, lw=1, alpha=0.6, zorder=2)
            for i in group.index:
                labels[i] = name if i == group.index[0] else ""
    if len(quant):
        front = pareto_front(list(quant[x]), list(quant["top1"]))
        pts = quant.loc[front].sort_values(x)
        ax.step(pts[x], pts["top1"], where="post", color="tab:red", lw=1.5, alpha=0.8, zorder=2,
                label="Pareto front")
    _place_labels(ax, labels, list(quant[x]), list(quant["top1"]))
    if len(fp32):
        ax.axhline(float(fp32["top1"].iloc[0]), color="black", ls="--", lw=1,
                   label=f"FP32 ({float(fp32[x].iloc[0]):.4g} {xlabel.split('(')[-1].rstrip(')')})")
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel("top-1 accuracy (%)", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="best", framealpha=0.9)
    return _save(fig, outputs)


# Candidate label offsets in points: right, left, above, below, then further out.
LABEL_OFFSETS = [(6, 4), (6, -11), (-6, 4), (-6, -11), (0, 9), (0, -15), (12, 14), (12, -20), (-12, 14),
                 (-12, -20), (18, 0), (-18, 0)]


def _place_labels(ax, labels, xs, ys) -> None:
    """Name every point, trying offsets until its text overlaps no earlier label or point.

    Crowded fronts (several policies at the same cost) are the rule in MPQ plots, so a fixed offset
    makes names unreadable. Falls back to the first offset when every candidate collides.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    placed = []
    for i in sorted(range(len(labels)), key=lambda i: (-ys[i], xs[i])):
        if not labels[i]:   # a sweep's other points: its curve is named once
            continue
        chosen = None
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy),
                               fontsize=8, color="0.2", ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer).expanded(1.05, 1.15)
            inside = ax.get_window_extent(renderer)
            hits_point = any(box.contains(px, py) for j, (px, py) in enumerate(points) if j != i)
            if (not any(box.overlaps(b) for b in placed) and not hits_point
                    and inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)):
                chosen = (text, box)
                break
            text.remove()
        if chosen is None:
            dx, dy = LABEL_OFFSETS[0]
            text = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy),
                               fontsize=8, color="0.2")
            chosen = (text, text.get_window_extent(renderer))
        placed.append(chosen[1])


def plot_policy_chart(policy, outputs) -> list[Path]:
    """The bit chart of a Policy (mpq.policy), titled with its name, fixed layers hatched."""
    return plot_policy_bits(policy.names, policy.w_bits, policy.a_bits, outputs,
                            f"{policy.meta['name']}: bits per layer ({policy.arch})", fixed_bits=policy.fixed_bits)


def plot_policy_bits(names, w_bits, a_bits, outputs, title: str, fixed_bits=None) -> list[Path]:
    """Grouped bars of weight and activation bits per layer, in network order.

    With `fixed_bits` ((stem w, a), (classifier w, a)) the stem and the classifier come first and
    last, hatched: they are not searched, yet their bits differ between methods (W8A8 by default,
    OMPQ's PTQ mode searches their weight bits), so a chart without them misleads.
    """
    names, w_bits, a_bits = list(names), list(w_bits), list(a_bits)
    hatched = set()
    if fixed_bits is not None:
        (stem_w, stem_a), (cls_w, cls_a) = fixed_bits
        names, w_bits, a_bits = ["stem (fixed)", *names, "classifier (fixed)"], [stem_w, *w_bits, cls_w], \
            [stem_a, *a_bits, cls_a]
        hatched = {0, len(names) - 1}
    n = len(names)
    width = max(6.0, min(0.32 * n + 2, 24.0))
    fig, ax = _pyplot().subplots(figsize=(width, 4.2))
    xs = range(n)
    for offset, bits, label, color in ((-0.2, w_bits, "weight bits", "tab:blue"),
                                       (0.2, a_bits, "activation bits", "tab:orange")):
        bars = ax.bar([i + offset for i in xs], bits, width=0.4, label=label, color=color)
        for i in hatched:
            bars[i].set_hatch("//")
            bars[i].set_edgecolor("white")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8 if n <= 30 else 6)
    top = max(list(w_bits) + list(a_bits) + [8])
    ax.set_yticks(range(0, top + 1))
    ax.set_ylim(0, top + 0.5)
    ax.set_ylabel("bits", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9, ncols=2, loc="upper right")
    return _save(fig, outputs)
