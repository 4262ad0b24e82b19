"""scripts/plot_size_sweep.py: means over seeds, the cost column, the table and the plot."""

import json
from pathlib import Path

import pytest

from tests.scripts import load_script

sweep = load_script("plot_size_sweep")


def _write_run(path: Path, cov_r: float, plain_cov_r: float, confs_per_cpu_s: float) -> None:
    def method(cov, mat, cov_p):
        return {"cov_r_mean": cov, "mat_r_mean": mat, "cov_p_mean": cov_p, "confs_per_cpu_s": confs_per_cpu_s}

    path.write_text(json.dumps({"methods": {"confdiff:none": method(plain_cov_r, 0.8, 0.3),
                                            "confdiff": method(cov_r, 0.7, 0.4)}}))


def test_point_is_the_mean_over_seeds(tmp_path):
    _write_run(tmp_path / "m_seed1.json", 0.6, 0.5, 50.0)
    _write_run(tmp_path / "m_seed2.json", 0.7, 0.55, 25.0)
    point = sweep.load_point(f"m:1234:{tmp_path}/m_seed*.json")
    assert point.seeds == 2 and point.parameters == 1234
    assert point.cov_r == pytest.approx(0.65) and (point.cov_r_min, point.cov_r_max) == (0.6, 0.7)
    assert point.plain_cov_r == pytest.approx(0.525) and point.mat_r == pytest.approx(0.7)
    assert point.ms_per_conformer == pytest.approx((20.0 + 40.0) / 2)  # mean of 1000 / confs_per_cpu_s
    table = sweep.markdown_table([point])
    assert "| m | 1,234 | 2 | 0.525 / 0.800 | 0.650 (0.600-0.700) / 0.700 / 0.400 | 30.0 |" in table


def test_missing_files_name_the_run(tmp_path):
    with pytest.raises(ValueError, match="--run m: no file matches"):
        sweep.load_point(f"m:1:{tmp_path}/none*.json")


def test_main_writes_the_plot(tmp_path, capsys):
    for name, cov in (("a", 0.6), ("b", 0.65)):
        _write_run(tmp_path / f"{name}_seed1.json", cov, cov - 0.05, 10.0 if name == "a" else 40.0)
    out = tmp_path / "sweep.png"
    sweep.main(["--run", f"a:10:{tmp_path}/a_*.json", "--run", f"b:100:{tmp_path}/b_*.json",
                "--teacher", "0.644:0.691", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| b |") and lines[3].startswith("| a |")  # b: 25 ms, a: 100 ms
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
