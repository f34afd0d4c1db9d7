"""No deprecation warning comes from the package's own imports or from building it."""

import os
import re
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))

# A fresh interpreter per run: RLlib reports a deprecated import once, at first import.
SCRIPT = textwrap.dedent(
    f"""
    import sys
    import warnings
    # Any warning raised from our own modules is an error.
    warnings.filterwarnings("error", module=r"rllib_staq(\\.|$)")
    sys.path.insert(0, {TESTS!r})
    import ray
    from ray.rllib.algorithms.dqn import DQNConfig
    import rllib_staq
    import rllib_staq.cli, rllib_staq.evaluation, rllib_staq.progress, rllib_staq.run_folder
    from conftest import tiny_config

    ray.init(num_cpus=2, include_dashboard=False)
    if sys.argv[1] == "staq":
        config = tiny_config()
    else:
        config = DQNConfig().environment("CartPole-v1")
        config.training(num_steps_sampled_before_learning_starts=0)
    algo = config.env_runners(num_env_runners=1).build_algo()
    algo.train()
    algo.stop()
    ray.shutdown()
    print("BUILT")
    """
)
DEPRECATION = re.compile(r"DeprecationWarning: (.*)")


def deprecation_messages(algo: str) -> set:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, algo],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0 and "BUILT" in completed.stdout, output
    # RLlib reports deprecated APIs through its logger (with a remote EnvRunner,
    # once per runner), not only through the warnings module.
    return {match.group(1).strip() for match in DEPRECATION.finditer(output)}


def test_staq_prints_no_deprecation_warning_beyond_rllibs_own_dqn():
    # RLlib 2.60 itself reports one deprecation in every remote EnvRunner, for any
    # algorithm (RLModule's internal RLModuleConfig); the package must add none.
    assert deprecation_messages("staq") - deprecation_messages("dqn") == set()
