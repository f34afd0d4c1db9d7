"""Reference returns on PettingZoo's simple_spread_v3, to read StaQ's curve against.

    pip install -e ".[pettingzoo]"
    python benchmarks/simple_spread_references.py --episodes 200

Three fixed policies, on the env of ``tuned_examples/simple_spread_staq.py``
(3 agents, 25 steps, discrete actions), each over the same env seeds:

- ``random``: every agent samples its 5 actions uniformly;
- ``no-op``: every agent stands still;
- ``assignment``: every agent solves the same optimal agent-to-landmark
  assignment (Hungarian method, from its own observation: landmark and other
  agents' positions relative to itself) and steps towards its landmark. It is
  a hand-written, near-collision-free policy, not an optimum.

Returns are the episode's sum over agents (RLlib's multi-agent return), mean
and standard error over episodes.
"""

import argparse
import os
import statistics
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tuned_examples"))
from simple_spread_staq import NUM_AGENTS, make_simple_spread  # noqa: E402

# MPE's discrete actions: 0 no-op, 1 left (-x), 2 right (+x), 3 down (-y), 4 up (+y).
NO_OP, LEFT, RIGHT, DOWN, UP = range(5)
# Within this distance of its landmark an agent stands still.
ARRIVED = 0.05


def observation_parts(obs: np.ndarray, num_agents: int):
    """MPE simple_spread's observation: own velocity, own position, landmarks and
    other agents relative to itself, then communication (unused)."""
    velocity = obs[0:2]
    landmarks = obs[4 : 4 + 2 * num_agents].reshape(num_agents, 2)
    others = obs[4 + 2 * num_agents : 4 + 2 * num_agents + 2 * (num_agents - 1)]
    return velocity, landmarks, others.reshape(num_agents - 1, 2)


def assignment_action(obs: np.ndarray, num_agents: int) -> int:
    velocity, landmarks, others = observation_parts(obs, num_agents)
    agents = np.vstack([np.zeros(2), others])  # row 0: this agent
    distances = np.linalg.norm(agents[:, None, :] - landmarks[None, :, :], axis=-1)
    rows, columns = linear_sum_assignment(distances)
    # Aim a little short of the landmark by the current velocity, so agents do not overshoot.
    direction = landmarks[columns[rows == 0][0]] - 0.5 * velocity
    if np.linalg.norm(direction) < ARRIVED:
        return NO_OP
    if abs(direction[0]) > abs(direction[1]):
        return RIGHT if direction[0] > 0 else LEFT
    return UP if direction[1] > 0 else DOWN


def episode_returns(policy, episodes: int, first_seed: int, rng: np.random.Generator):
    env = make_simple_spread({"num_agents": NUM_AGENTS})
    returns = []
    for episode in range(episodes):
        observations, _ = env.reset(seed=first_seed + episode)
        total, done = 0.0, False
        while not done:
            actions = {agent: policy(obs, rng) for agent, obs in observations.items()}
            observations, rewards, terminateds, truncateds, _ = env.step(actions)
            total += sum(rewards.values())
            done = terminateds["__all__"] or truncateds["__all__"]
        returns.append(total)
    env.close()
    return returns


POLICIES = {
    "random": lambda obs, rng: int(rng.integers(5)),
    "no-op": lambda obs, rng: NO_OP,
    "assignment": lambda obs, rng: assignment_action(obs, NUM_AGENTS),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    print(f"simple_spread_v3, {NUM_AGENTS} agents, {args.episodes} episodes per policy")
    print(f"{'policy':>10} | return (sum over agents) | per agent")
    for name, policy in POLICIES.items():
        returns = episode_returns(policy, args.episodes, args.first_seed, np.random.default_rng(0))
        mean = statistics.fmean(returns)
        sem = statistics.stdev(returns) / len(returns) ** 0.5
        print(f"{name:>10} | {mean:>9.1f} +- {sem:<4.1f}      | {mean / NUM_AGENTS:.1f}")


if __name__ == "__main__":
    main()
