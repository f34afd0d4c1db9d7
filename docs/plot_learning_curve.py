"""Plot the greedy-return curve of a ``benchmarks/learning_curves.py --out`` CSV as a PNG.

The CSV needs ``env_steps`` and a return column (``eval_return``, or ``greedy_return`` as in
a ``--no-tune`` run folder's ``progress.csv``; rows without a return are skipped), and either
``seed`` (one "StaQ, seed N" line per seed) or ``label`` (one line per label, e.g. to draw
StaQ beside a baseline)::

    python docs/plot_learning_curve.py /tmp/curves.csv docs/lunarlander_staq.png \\
        --title "StaQ, LunarLander-v3" --hline 200 --hline-label "target" --random -192

With ``--mean-over-seeds`` (a CSV with ``label`` and ``seed``), each label is one line,
the mean over its seeds, with the band between the seeds' lowest and highest return.
"""

import argparse
import csv
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv")
    parser.add_argument("png")
    parser.add_argument("--title", required=True)
    parser.add_argument("--hline", type=float, default=None, help="target return")
    parser.add_argument("--hline-label", default="target")
    parser.add_argument("--random", type=float, default=None, help="random-policy return")
    parser.add_argument(
        "--mean-over-seeds",
        action="store_true",
        help="one line per label: the mean over its seeds, with their min-max band",
    )
    args = parser.parse_args()

    curves = defaultdict(list)  # label -> [(env steps, return, seed)]
    with open(args.csv) as handle:
        for row in csv.DictReader(handle):
            value = row.get("eval_return", row.get("greedy_return", ""))
            if value == "":
                continue  # an iteration without an evaluation
            label = row["label"] if "label" in row else f"StaQ, seed {row['seed']}"
            curves[label].append((int(row["env_steps"]), float(value), row.get("seed")))
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in sorted(curves.items()):
        if args.mean_over_seeds:
            plot_mean_and_band(axes, label, points)
        else:
            steps, returns, _ = zip(*sorted(points))
            axes.plot(steps, returns, marker="o", label=label)
    if args.hline is not None:
        axes.axhline(args.hline, color="tab:green", linestyle="--", label=args.hline_label)
    if args.random is not None:
        axes.axhline(args.random, color="grey", linestyle=":", label="random policy (issue 12)")
    axes.set_xlabel("env steps")
    axes.set_ylabel("greedy return (10 episodes)")
    axes.set_title(args.title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.png, dpi=120)


def plot_mean_and_band(axes, label: str, points) -> None:
    """The mean return over seeds at each env step, and the band between the lowest and
    highest seed (only steps that every seed reached)."""
    by_step = defaultdict(dict)
    for step, value, seed in points:
        by_step[step][seed] = value
    num_seeds = len({seed for _, _, seed in points})
    steps = sorted(step for step, values in by_step.items() if len(values) == num_seeds)
    per_step = [list(by_step[step].values()) for step in steps]
    means = [sum(values) / len(values) for values in per_step]
    line = axes.plot(steps, means, marker="o", label=f"{label} (mean of {num_seeds} seeds)")
    axes.fill_between(
        steps,
        [min(values) for values in per_step],
        [max(values) for values in per_step],
        color=line[0].get_color(),
        alpha=0.15,
    )


if __name__ == "__main__":
    main()
