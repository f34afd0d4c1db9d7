"""What a ``--no-tune`` run leaves behind: a CSV per iteration, a PNG curve, checkpoints.

Layout of a run folder::

    progress.csv            one row per iteration (IterationRecord's fields)
    learning_curve.png      returns vs env steps; entropy and KL vs iterations
    checkpoint/             the final Algorithm checkpoint (resume with Algorithm.from_checkpoint)
    checkpoint_iter_000010/ periodic checkpoints (--checkpoint-freq)
    rllib/                  RLlib's own result.json and params.json
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import List, Sequence

from rllib_staq.progress import IterationRecord

CSV_NAME = "progress.csv"
CURVE_NAME = "learning_curve.png"
FINAL_CHECKPOINT = "checkpoint"
RLLIB_LOGS = "rllib"


# IterationRecord's field that becomes one CSV column per policy.
PER_POLICY_FIELD = "policy_greedy_returns"


def policy_column(policy_id: str) -> str:
    return f"greedy_return/{policy_id}"


class RunFolder:
    """``policy_ids``: a multi-agent run's policies, one greedy-return column each."""

    def __init__(self, path: str, policy_ids: Sequence[str] = ()):
        self.path = os.path.abspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.records: List[IterationRecord] = []
        self.policy_ids = sorted(str(policy_id) for policy_id in policy_ids)
        self._fields = [
            field.name
            for field in dataclasses.fields(IterationRecord)
            if field.name != PER_POLICY_FIELD
        ]
        with open(self.csv_path, "w", newline="") as csv_file:
            columns = self._fields + [policy_column(p) for p in self.policy_ids]
            csv.writer(csv_file).writerow(columns)

    @property
    def csv_path(self) -> str:
        return os.path.join(self.path, CSV_NAME)

    @property
    def curve_path(self) -> str:
        return os.path.join(self.path, CURVE_NAME)

    @property
    def final_checkpoint_path(self) -> str:
        return os.path.join(self.path, FINAL_CHECKPOINT)

    @property
    def rllib_log_path(self) -> str:
        return os.path.join(self.path, RLLIB_LOGS)

    def periodic_checkpoint_path(self, iteration: int) -> str:
        return os.path.join(self.path, f"checkpoint_iter_{iteration:06d}")

    def record(self, record: IterationRecord) -> None:
        """Appends one row (flushed at once, so an interrupted run keeps its rows)."""
        self.records.append(record)
        row = [getattr(record, name) for name in self._fields]
        row += [record.policy_greedy_returns.get(p, math.nan) for p in self.policy_ids]
        with open(self.csv_path, "a", newline="") as csv_file:
            csv.writer(csv_file).writerow(["" if _is_nan(v) else v for v in row])

    def plot(self, title: str) -> str:
        """Writes the learning curve PNG; returns its path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        iterations = [r.iteration for r in self.records]
        greedy = self._points("greedy_return")
        # Only the iterations in which episodes ended: matplotlib breaks a line at each NaN,
        # so a sparse series (Freeway, one iteration in 40) would draw nothing.
        training = self._points("training_return")
        fig, (returns_ax, policy_ax) = plt.subplots(1, 2, figsize=(11, 4))
        if training:
            returns_ax.plot(*zip(*training), label="training return (epsilon-softmax)")
        if greedy:
            label = "greedy return (evaluation)"
            if self.policy_ids:
                label = "greedy return, sum over agents (evaluation)"
            returns_ax.plot(*zip(*greedy), "o-", label=label)
        for policy_id in self.policy_ids:
            policy_greedy = [
                (r.env_steps, r.policy_greedy_returns[policy_id])
                for r in self.records
                if policy_id in r.policy_greedy_returns
            ]
            if policy_greedy:
                returns_ax.plot(*zip(*policy_greedy), ".--", label=f"greedy return, {policy_id}")
        returns_ax.set_xlabel("env steps")
        returns_ax.set_ylabel("episode return")
        returns_ax.legend()
        returns_ax.grid(alpha=0.3)
        policy_ax.plot(
            iterations,
            [r.policy_entropy for r in self.records],
            color="tab:green",
            label="policy entropy H(pi)",
        )
        policy_ax.set_xlabel("iteration")
        policy_ax.set_ylabel("entropy (nats)", color="tab:green")
        kl_ax = policy_ax.twinx()
        kl_ax.plot(
            iterations,
            [r.kl_pi_k_pi_k_plus_1 for r in self.records],
            color="tab:red",
            label="KL(pi_k || pi_k+1)",
        )
        kl_ax.set_ylabel("KL(pi_k || pi_k+1)", color="tab:red")
        policy_ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(self.curve_path, dpi=100)
        plt.close(fig)
        return self.curve_path

    def _points(self, field: str) -> List[tuple]:
        """(env steps, value) of the iterations where ``field`` is not NaN."""
        return [
            (r.env_steps, getattr(r, field)) for r in self.records if not _is_nan(getattr(r, field))
        ]


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
