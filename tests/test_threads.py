"""intra_op_threads: one torch thread by default, never overriding an explicit choice."""

import pytest
import torch

from rllib_staq import threads

from conftest import tiny_config


@pytest.mark.parametrize(
    "setting, environ, expected",
    [
        ("auto", {}, 1),
        ("auto", {"OMP_NUM_THREADS": "2"}, None),  # the user's (or Ray's) choice stands
        ("auto", {"MKL_NUM_THREADS": "4"}, None),
        (3, {"OMP_NUM_THREADS": "2"}, 3),  # an explicit setting wins
        (None, {}, None),
    ],
)
def test_threads_for_each_setting(setting, environ, expected):
    assert threads.threads_for(setting, environ) == expected


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("setting, expected", [(1, 1), (2, 2), (None, 2), ("auto", 2)])
def test_building_staq_applies_the_setting(ray_session, restore_torch_threads, setting, expected):
    # The tests run with OMP_NUM_THREADS=1 (conftest), so "auto" leaves torch alone.
    torch.set_num_threads(2)
    algo = tiny_config(intra_op_threads=setting).build_algo()
    try:
        assert torch.get_num_threads() == expected
        algo.train()
        assert torch.get_num_threads() == expected
    finally:
        algo.stop()


def test_auto_sets_one_thread_when_nothing_chose(monkeypatch, restore_torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert threads.apply_intra_op_threads("auto") == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_bad_intra_op_threads_is_refused(bad):
    with pytest.raises(ValueError, match="intra_op_threads"):
        tiny_config(intra_op_threads=bad).validate()
