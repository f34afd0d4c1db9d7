"""README "Use a trained policy": the block runs as written on a real checkpoint."""

import io
import os
import re
from contextlib import redirect_stdout

import numpy as np
import torch

from conftest import tiny_config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_deploy_block() -> str:
    with open(README) as readme:
        text = readme.read()
    section = text[text.index("## Use a trained policy") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_block_loads_the_module_without_ray_and_plays_greedy_episode(tmp_path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        algo = tiny_config().build_algo()
        for _ in range(3):
            algo.train()
        checkpoint = algo.save_to_path(str(tmp_path / "checkpoint"))
        acting_module = algo.get_module()
        obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
        with torch.no_grad():
            expected_logits = acting_module.forward_inference({"obs": torch.as_tensor(obs)})[
                "action_dist_inputs"
            ]
        algo.stop()
    finally:
        ray.shutdown()
    assert not ray.is_initialized()

    block = readme_deploy_block()
    block, replaced = re.subn(
        r'^checkpoint = ".*"', f"checkpoint = {checkpoint!r}", block, flags=re.M
    )
    assert replaced == 1
    namespace, printed = {}, io.StringIO()
    with redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), namespace)
    assert not ray.is_initialized()  # The recipe needs no Ray.
    assert re.fullmatch(r"greedy return: \d+\.0\n", printed.getvalue())
    assert namespace["episode_return"] >= 1

    # The loaded module is the learner's full module with the trained stack: it
    # acts exactly as the EnvRunner's module did, and has its Q-networks.
    module = namespace["module"]
    assert module.stack_fill == 3 and len(module.q_nets) == 2
    with torch.no_grad():
        loaded = module.forward_inference({"obs": torch.as_tensor(obs)})
    torch.testing.assert_close(loaded["action_dist_inputs"], expected_logits)
    assert torch.equal(loaded["actions"], expected_logits.argmax(-1))
