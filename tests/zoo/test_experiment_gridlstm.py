"""The `gridlstm` experiment on real MNIST: the nets it compares have equal parameter
counts, equal time is converted to steps by the measured speeds, a small run writes
complete results and a figure and is resumed from its cells, and (slow) a reduced run's
measurable outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zoo.experiments import gridlstm
from zoo.experiments.base import CELLS_FILENAME, Context
from zoo.models import get_spec
from zoo.models.layers import count_params


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are small: one torch thread runs them fastest, and several threads
    spin against each other on a shared machine. What the test found is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_3d_nets_have_the_2d_nets_parameter_count() -> None:
    config = gridlstm.Config()
    nets = gridlstm.sizes(config)
    assert list(nets) == ["2d", "3d-2", "3d-3"]
    assert nets["2d"] == {"hidden": 96, "params": 225_514, "depth": 0}  # the zoo's grid_lstm
    for net in ("3d-2", "3d-3"):
        assert abs(nets[net]["params"] / nets["2d"]["params"] - 1) < 0.03
    # The 2-layer 3D net is the zoo's registered grid_lstm_3d.
    registered = get_spec("grid_lstm_3d").config
    assert (nets["3d-2"]["hidden"], 2) == (registered.hidden, registered.depth)
    assert nets["3d-2"]["params"] == count_params(get_spec("grid_lstm_3d").build())


@pytest.mark.parametrize("net", ["2d", "3d-2", "3d-3"])
@pytest.mark.parametrize("params", [20_000, 225_514])
def test_matching_hidden_is_the_nearest_size(net: str, params: int) -> None:
    config = gridlstm.Config()
    hidden = gridlstm.matching_hidden(net, params, config)

    def distance(h: int) -> int:
        return abs(count_params(gridlstm.build(net, h, config)) - params)

    assert distance(hidden) <= min(distance(hidden - 1), distance(hidden + 1))


def test_equal_time_is_the_steps_run_in_the_2d_nets_time() -> None:
    speeds = {
        "2d": {"train_images_per_s": 1000.0},
        "3d-2": {"train_images_per_s": 800.0},
        "3d-3": {"train_images_per_s": 500.0},
    }
    assert gridlstm.equal_time_steps(1000, speeds, "3d-2") == 800
    assert gridlstm.equal_time_steps(1000, speeds, "3d-3") == 500
    assert gridlstm.equal_time_steps(1000, speeds, "2d") == 1000


TINY = gridlstm.Config(
    seeds=2,
    patch=7,
    hidden_2d=16,
    depths=(2,),
    steps=20,
    eval_every=10,
    val_size=300,
    test_size=500,
    timing_steps=2,
    inference_batches=(1, 8),
    inference_images=16,
    timing_repeats=1,
)


def test_a_run_is_complete_and_resumed_from_its_cells(tmp_path: Path) -> None:
    key = TINY.model_dump_json()
    first = Context(tmp_path, progress=False, config_key=key)
    results = gridlstm.run(TINY, first)
    cells = json.loads((tmp_path / CELLS_FILENAME).read_text())["cells"]
    # 2 speeds; 2 nets x 2 seeds at equal steps; the 3D net at equal time.
    assert first.computed == len(cells) == 2 + 4 + 1
    again = Context(tmp_path, progress=False, config_key=key)
    assert gridlstm.run(TINY, again) == results and again.computed == 0
    assert list(results["nets"]) == ["2d", "3d-2"]
    for net in ("2d", "3d-2"):
        speed = results["speed"][net]
        assert speed["train_images_per_s"] > 0
        assert set(speed["inference_images_per_s"]) == {"1", "8"}
        for run in results["equal_steps"][net]:
            assert [p[0] for p in run["curve"]] == [0, 10, 20]
            assert 0 <= run["test_accuracy"] <= 1 and run["diverged_at"] is None
    (timed,) = results["equal_time"]["3d-2"]
    assert timed["steps"] == gridlstm.equal_time_steps(20, results["speed"], "3d-2")
    lines = gridlstm.verdicts(results)
    assert [line[:3] for line in lines] == ["(a)", "(b)", "(c)"]
    assert "| 2D, hidden 16 |" in gridlstm.report(results)
    (figure,) = gridlstm.plot(results, TINY, tmp_path)
    assert figure.name == "gridlstm.png" and figure.stat().st_size > 1000


def test_quick_mode_covers_every_part_with_small_nets() -> None:
    quick, full = gridlstm.make_config(quick=True, seeds=None), gridlstm.Config()
    assert quick.depths == full.depths and quick.steps < full.steps
    assert gridlstm.make_config(quick=False, seeds=3).seeds == 3


@pytest.mark.slow
def test_a_reduced_run_trains_every_net_at_equal_size(tmp_path: Path) -> None:
    """The full-size nets for 300 steps, one seed: what is measurable without timing
    assertions. Every net learns far above chance (10%) at equal steps and at equal
    time, none diverges, and the parameter counts stay equal. The claim's direction is
    not asserted: the full run (800 steps, 2 seeds) had the 2D net 0.2 points ahead of
    the 2-layer 3D net, within a point, and short runs do not settle it either way."""
    config = gridlstm.Config(
        seeds=1, depths=(2,), steps=300, eval_every=100, val_size=2000, test_size=2000
    )
    results = gridlstm.run(config, Context(tmp_path, progress=False, config_key="slow"))
    nets = results["nets"]
    assert abs(nets["3d-2"]["params"] / nets["2d"]["params"] - 1) < 0.03
    runs = [*results["equal_steps"]["2d"], *results["equal_steps"]["3d-2"]]
    runs += results["equal_time"]["3d-2"]
    for run in runs:
        assert run["diverged_at"] is None
        assert run["test_accuracy"] > 0.85
        assert run["curve"][-1][1] > run["curve"][0][1] + 0.5  # validation: it learned
