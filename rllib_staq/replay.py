"""A tensor ring of transitions on the learner: FQI samples its minibatches here.

RLlib's ``EpisodeReplayBuffer`` costs ~0.2 ms of Python per sampled item, and one
StaQ iteration samples 5000 x 256 items; the learner therefore keeps the newest
``capacity`` transitions (the same data the algorithm adds to its RLlib buffer)
as flat tensors, plus one column per transition for pi_k's next-state logits.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch


class TransitionTable:
    """FIFO ring of transitions stored column-wise as tensors."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError(f"TransitionTable capacity must be >= 1, got {capacity}.")
        self.capacity = capacity
        self.device = torch.device(device)
        self.columns: Dict[str, torch.Tensor] = {}
        self.size = 0
        self.write_index = 0

    def add(self, columns: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Appends rows (oldest are overwritten); returns the row indices written."""
        num_rows = next(iter(columns.values())).shape[0]
        if not self.columns:
            self._allocate(columns)
        if num_rows > self.capacity:  # Only the newest `capacity` rows survive.
            columns = {key: value[-self.capacity :] for key, value in columns.items()}
            num_rows = self.capacity
        rows = (self.write_index + torch.arange(num_rows, device=self.device)) % self.capacity
        for key, value in columns.items():
            self.columns[key][rows] = value.to(self.columns[key].dtype)
        self.write_index = (self.write_index + num_rows) % self.capacity
        self.size = min(self.size + num_rows, self.capacity)
        return rows

    def _allocate(self, columns: Dict[str, torch.Tensor]) -> None:
        for key, value in columns.items():
            self.columns[key] = torch.zeros(
                (self.capacity, *value.shape[1:]), dtype=value.dtype, device=self.device
            )

    def sample_indices(
        self, batch_size: int, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Uniform indices with replacement over the filled rows."""
        return torch.randint(self.size, (batch_size,), generator=generator, device=self.device)

    def gather(self, indices: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {key: value[indices] for key, value in self.columns.items()}

    def filled(self, key: str) -> torch.Tensor:
        """The filled part of one column (a view)."""
        return self.columns[key][: self.size]

    def get_state(self) -> Dict:
        return {
            "capacity": self.capacity,
            "size": self.size,
            "write_index": self.write_index,
            "columns": {k: v[: self.size].cpu() for k, v in self.columns.items()},
        }

    def set_state(self, state: Dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"Checkpointed replay capacity {state['capacity']} does not match the "
                f"configured replay_buffer_config['capacity'] ({self.capacity})."
            )
        self.columns = {}
        self.size = 0
        self.write_index = 0
        if state["columns"]:
            self._allocate(state["columns"])
            for key, value in state["columns"].items():
                self.columns[key][: state["size"]] = value
        self.size = state["size"]
        self.write_index = state["write_index"]
