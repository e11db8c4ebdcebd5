"""scripts/data_size_curve.py: the learning curve over data size that BENCHMARKS.md draws from its points file."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POINTS = ROOT / "docs" / "benchmarks" / "data_size" / "points.json"


@pytest.fixture(scope="module")
def curve():
    spec = importlib.util.spec_from_file_location("data_size_curve", ROOT / "scripts" / "data_size_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_points_make_a_table_row_each_and_a_plot(curve, tmp_path):
    points = curve.read_points(POINTS)
    table = curve.markdown(points).splitlines()
    assert len(table) == 2 + len(points)
    assert {p["heads"] for p in points} >= {"Hydra++", "Medusa"}
    curve.plot(points, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_point_without_its_measurement_is_refused(curve, tmp_path):
    broken = tmp_path / "points.json"
    broken.write_text(json.dumps({"points": [{"heads": "Medusa", "series": "s", "answer_tokens": 1, "source": "x"}]}))
    with pytest.raises(SystemExit, match="point 0 lacks mc_sim_7b_63"):
        curve.read_points(broken)
