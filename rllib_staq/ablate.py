"""The paper's three StaQ ablations, with the outputs of ``rllib_staq.compare``.

    python -m rllib_staq.ablate --study stack-size --env Acrobot-v1 --seeds 3 \\
        --stop-timesteps 50000 --out DIR

Each variant is StaQ's tuned example of that env with one setting changed; everything
else (seeds, budget, evaluation schedule, runners) is the comparison protocol.

- ``stack-size``: M in {1, 10, 50, 300} (``--values`` to change); reference M=300.
- ``weight-correction``: the correction 1/(1-beta^M) on and off at a small M
  (``--stack-size``, default 10, where beta^M is not tiny: on Acrobot's tuned example
  beta = 5/(5+0.4/ln 3) = 0.93 at the final tau, beta^10 = 0.49); reference on.
- ``epsilon``: epsilon-softmax epsilon in {0, 0.05}; reference 0.05.

More seeds for a finished study: the same command with ``--first-seed N --seeds K`` and a new
``--out NEW``, then the same command with ``--report-only --include NEW/curves.csv`` and the
first ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rllib_staq import compare, presets

STUDIES = ("stack-size", "weight-correction", "epsilon")


def study_variants(study: str, values, small_stack_size: int) -> dict[str, dict]:
    """{variant label: StaQ training overrides}, the reference variant first."""
    if study == "stack-size":
        sizes = [int(v) for v in (values or [300, 1, 10, 50])]
        return {f"StaQ M={size}": {"stack_size": size} for size in sizes}
    if study == "weight-correction":
        return {
            f"StaQ correction=on M={small_stack_size}": {
                "stack_size": small_stack_size,
                "weight_correction": True,
            },
            f"StaQ correction=off M={small_stack_size}": {
                "stack_size": small_stack_size,
                "weight_correction": False,
            },
        }
    if study == "epsilon":
        epsilons = [float(v) for v in (values or [0.05, 0.0])]
        return {f"StaQ epsilon={eps:g}": {"epsilon": eps} for eps in epsilons}
    raise ValueError(f"Unknown study {study!r}: allowed studies are {list(STUDIES)}")


def build_experiments(study: str, envs, values, small_stack_size: int) -> list[compare.Experiment]:
    presets.check_names(["StaQ"], envs)
    experiments = []
    for env in envs:
        for label, overrides in study_variants(study, values, small_stack_size).items():
            config = presets.preset_config("StaQ", env).training(**overrides)
            experiments.append(
                compare.Experiment(
                    label,
                    env,
                    config,
                    f"{presets.preset_source('StaQ', env)} with {overrides}",
                )
            )
    return experiments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rllib_staq.ablate", description=__doc__.split("\n")[0]
    )
    compare.add_run_args(parser)
    parser.add_argument("--study", required=True, choices=STUDIES)
    parser.add_argument(
        "--values",
        nargs="+",
        default=None,
        help="stack-size: the M values; epsilon: the epsilons (first = reference)",
    )
    parser.add_argument(
        "--stack-size", type=int, default=10, help="weight-correction: the small M of both variants"
    )
    args = parser.parse_args(argv)
    compare.check_run_args(parser, args)
    if args.values and args.study == "weight-correction":
        parser.error("--values does not apply to --study weight-correction (use --stack-size)")
    try:
        presets.check_names(["StaQ"], args.env)
        study_variants(args.study, args.values, args.stack_size)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    title = f"StaQ ablation: {args.study}"
    command = ["python -m rllib_staq.ablate"] + list(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        reference = next(iter(study_variants(args.study, args.values, args.stack_size)))
        return compare.report_from_csv(args, command, title, reference)
    experiments = build_experiments(args.study, args.env, args.values, args.stack_size)
    reference = experiments[0].label
    return compare.execute(experiments, args, reference, title, command)


if __name__ == "__main__":
    sys.exit(main())
