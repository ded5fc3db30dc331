"""bench/gpu_check.py on the CPU: every row reported as it finishes, and the JSON summary at the end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_check_on_a_cpu_streams_its_rows_and_lists_what_it_could_not_check(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    assert gpu_check.main(["--quick", "--device", "cpu", "--kinds", "regressor_pointfit"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    streamed = [json.loads(line.split("gpu_check: row ", 1)[1]) for line in err.splitlines()
                if line.startswith("gpu_check: row ")]
    assert streamed == summary["runs"] and len(streamed) == 1
    row = streamed[0]
    assert row["ok"] and row["kind"] == "regressor_pointfit" and row["compile"] == "none"
    assert row["events_per_s"] > 0 and row["operators_per_step"] > 1000  # a step of this model runs thousands
    assert summary["all_ok"] and summary["mae_tiny_bf16_saved_mib_per_event"] > 0
    assert any("torch.compile" in line for line in summary["not_checked"])
