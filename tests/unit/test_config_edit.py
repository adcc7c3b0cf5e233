"""One value set in the lab's config file, its comments and order kept (edge.config.edit)."""

import pytest

from edge.config import load_config
from edge.config.edit import set_line, write_value
from edge.errors import ConfigError
from tests.conftest import ROOT


def test_a_key_is_replaced_added_or_its_section_created():
    text = (
        "device_id: box-1  # the bench scope\nanalysis:\n  max_batch: 16   # small GPU\n  um_per_px: 0.2\n"
        "counting:\n  target_count: 500\n"
    )
    replaced = set_line(text, "analysis", "um_per_px", "0.11", "calibrated")
    assert "  um_per_px: 0.11  # calibrated\n" in replaced and "0.2" not in replaced
    assert "# the bench scope" in replaced and "# small GPU" in replaced
    added = set_line("analysis:\n  # batch\n  max_batch: 16\n", "analysis", "um_per_px", "0.11", "c")
    assert added == "analysis:\n  um_per_px: 0.11  # c\n  # batch\n  max_batch: 16\n"
    created = set_line("device_id: box-1\n", "analysis", "um_per_px", "0.11", "c")
    assert created == "device_id: box-1\nanalysis:\n  um_per_px: 0.11  # c\n"
    assert set_line("", "analysis", "um_per_px", "0.11", "c") == "analysis:\n  um_per_px: 0.11  # c\n"
    with pytest.raises(ConfigError, match="flow style"):
        set_line("analysis: {max_batch: 16}\n", "analysis", "um_per_px", "0.11", "c")


def test_the_example_config_takes_the_scale_and_still_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "config.example.yaml").read_text())
    path.chmod(0o640)
    write_value(path, "analysis", "um_per_px", "0.0931", "calibrate-scale")
    assert load_config(path, environ={}).analysis.um_per_px == 0.0931
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    before = path.read_text()
    with pytest.raises(ConfigError, match=r"analysis\.um_per_px"):  # a value the config refuses: nothing replaced
        write_value(path, "analysis", "um_per_px", "-1", "wrong")
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
