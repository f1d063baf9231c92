"""The latency preset's rows (``fastmtl.bench.latency``): every column filled where it applies, and
the TorchJD-on-parameters contender computing what TorchJD computes on the matrix."""

import pytest
import torch

from fastmtl.bench import latency
from fastmtl.bench.speed import make_inputs

torchjd = pytest.importorskip("torchjd")


def test_torchjd_on_parameters_is_torchjd_on_the_matrix():
    grads, J = make_inputs(3, 1000, torch.float32, "cpu", "params")
    agg = latency.torchjd_peers(3)["upgrad"]
    parts = latency.torchjd_on_parameters(agg, grads)
    assert [p.shape for p in parts] == [g.shape for g in grads[0]]
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in parts]), agg(J))


@pytest.mark.parametrize("layout", ["matrix", "params"])
def test_rows_hold_every_measurement(layout):
    rows = latency.run_point(2, 1000, layout, methods=["mean", "upgrad"], rounds=1, reps=1)
    assert [r.method for r in rows] == ["mean", "upgrad"]
    for r in rows:
        assert r.ms > 0 and r.floor_ms > 0 and r.torchjd_ms > 0
        assert r.ratio_floor == pytest.approx(r.ms / r.floor_ms)
        assert r.speedup_vs_torchjd == pytest.approx(r.torchjd_ms / r.ms)
        assert (r.solve_us is None) == (r.method == "mean")
        if layout == "params":
            assert r.torchjd_cat_ms > 0 and r.speedup_vs_torchjd_cat == pytest.approx(r.torchjd_cat_ms / r.ms)
        else:
            assert r.torchjd_cat_ms is None and r.speedup_vs_torchjd_cat is None
    table = latency.format_latency(rows)
    assert table.count("\n") == len(rows) + 1 and "TorchJD+cat" in table


def test_summary_reads_a_run_and_counts_the_targets(tmp_path):
    from fastmtl.bench import latency_summary
    rows = []
    for K in (8,):
        for D in (10_000, 100_000, 1_000_000):
            rows += latency.run_point(K, D // 100, "matrix", methods=["mean", "upgrad"], rounds=1, reps=1)
    for r in rows:  # stand the small sizes in for the preset's
        r.D *= 100
    path = tmp_path / "latency.csv"
    latency._write_csv(rows, str(path))
    read = latency_summary.read_rows(str(path))
    assert len(read) == len(rows) and read[1]["solve_us"] == pytest.approx(rows[1].solve_us)
    flat = latency_summary.flat_table(read)
    assert flat.splitlines()[2].startswith("| `mean` | — | ") and "`upgrad`" in flat
    text = latency_summary.targets(read)
    slower = sum(r.speedup_vs_torchjd < 1 for r in rows)
    assert f"faster in {slower} of {len(rows)} cells" in text
    assert "One solve at K = 8 ≤ 50 µs" in text
