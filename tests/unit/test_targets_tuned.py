"""TunedForward: chunks, worker threads with one torch thread each, fallbacks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from bbzo.blackbox.targets.tuned import TunedForward
from bbzo.errors import InputError


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()


def test_workers_run_one_torch_thread_each_and_leave_the_callers_count():
    keep = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        module = small_cnn()
        tuned = TunedForward(module, chunk=4)  # threads=None: the caller's 3
        x = torch.rand(22, 1, 8, 8)
        got = tuned(x)  # 6 chunks over 3 workers, the last one padded
        with torch.no_grad():
            assert torch.allclose(got, module(x), atol=1e-5)
        assert tuned._workers is not None and tuned._workers.threads == 3
        assert set(tuned._workers.map(lambda _: torch.get_num_threads(), range(9))) == {1}
        assert torch.get_num_threads() == 3  # the caller's count is untouched
        later: list[int] = []  # and a thread started afterwards begins with it too
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [3]
        one = TunedForward(module, chunk=4, threads=1)
        assert torch.equal(one(x), got) and one._workers is None  # same graph, same numbers
        tuned.close()
        assert tuned._workers is None
        assert torch.equal(tuned(x), got)  # workers start again when needed
        tuned.close()
    finally:
        torch.set_num_threads(keep)


def test_parts_are_gathered_across_their_boundaries():
    module = small_cnn()
    rng = np.random.default_rng(3)
    parts = [rng.random((k, 1, 8, 8), dtype=np.float32) for k in (1, 6, 2, 9)]
    tuned = TunedForward(module, chunk=4, threads=2)
    got = tuned.parts(parts)  # chunks cut 4 | 4 | 4 | 4 + 2 zero rows from the 18-row stack
    with torch.no_grad():
        assert torch.allclose(got, module(torch.from_numpy(np.concatenate(parts))), atol=1e-5)
    tuned.close()


class Twice(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2)  # writes into its input: the trace returns the chunk buffer itself


def test_an_output_that_is_the_chunk_buffer_is_copied_before_the_next_chunk():
    x = torch.arange(12.0).reshape(6, 2)
    tuned = TunedForward(Twice(), chunk=2, threads=1)
    assert tuned.graphs == {} and torch.equal(tuned(x.clone()), 2 * x)
    assert tuned.graphs[(2,)] is not None  # the graph ran, not the module


@pytest.mark.parametrize("name, value", [("chunk", 0), ("threads", 0), ("threads", 1.5),
                                         ("threads", True), ("chunk", -2)])
def test_sizes_are_checked(name, value):
    with pytest.raises(InputError, match=f"{name} must be a positive integer"):
        TunedForward(small_cnn(), **{name: value})
