"""What one FullyConnected node costs by rows (tokens) on this CPU: one FFN matrix pair of all-MiniLM-L6-v2's shape,
[M, 384] x [384, 1536] then [M, 1536] x [1536, 384], in OpenVINO at bf16 and f32 precision, 2 threads, LATENCY, the
weights hot in L2 (random weights; the time does not depend on their values). Every row count is compiled once and
timed in 6 rounds, the order reversed every other round, 200 calls each; per case the median over rounds of each
round's median per-node time (OpenVINO's PERF_COUNT), so a slow spell of the host falls on every case alike.

Run from the project root (output: fc_rows_sweep.log beside it):
.venv/bin/python benchmarks/results/intel-xeon-processor-amx/cpu-amx-lines-tuned/fc_rows_sweep.py
"""

from __future__ import annotations

import statistics

import numpy as np
import openvino as ov
import openvino.opset13 as ops

ROWS = (8, 16, 24, 32, 48, 64)
PRECISIONS = ("bf16", "f32")
ROUNDS, CALLS = 6, 200


def request(core: ov.Core, rows: int, precision: str, w1: np.ndarray, w2: np.ndarray) -> ov.InferRequest:
    """A compiled FFN pair for ``rows`` rows, warmed up."""
    x = ops.parameter([rows, 384], np.float32, name="x")
    h = ops.matmul(ops.relu(ops.matmul(x, ops.constant(w1), False, False)), ops.constant(w2), False, False)
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": 2,
        "INFERENCE_PRECISION_HINT": precision,
        "PERF_COUNT": True,
    }
    req = core.compile_model(ov.Model([h], [x]), "CPU", config).create_infer_request()
    req.set_tensor("x", ov.Tensor(np.random.default_rng(1).standard_normal((rows, 384)).astype(np.float32)))
    for _ in range(100):
        req.infer()
    return req


def node_seconds(req: ov.InferRequest) -> float:
    """The median over ``CALLS`` calls of the mean time of the request's FullyConnected nodes."""
    times = []
    for _ in range(CALLS):
        req.infer()
        fc = [p.real_time.total_seconds() for p in req.profiling_info if p.node_type == "FullyConnected"]
        times.append(statistics.mean(fc))
    return statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((384, 1536)) * 0.05).astype(np.float32)
    w2 = (rng.standard_normal((1536, 384)) * 0.05).astype(np.float32)
    core = ov.Core()
    reqs = {(m, p): request(core, m, p, w1, w2) for m in ROWS for p in PRECISIONS}
    rounds: dict[tuple[int, str], list[float]] = {k: [] for k in reqs}
    for r in range(ROUNDS):
        for key in list(reqs)[:: -1 if r % 2 else 1]:
            rounds[key].append(node_seconds(reqs[key]))
    for (m, p), vals in rounds.items():
        t = statistics.median(vals)
        print(
            f"M={m:3d} {p:5s} per FC {t * 1e6:6.1f} us (rounds {min(vals) * 1e6:.0f}-{max(vals) * 1e6:.0f}), "
            f"{2 * m * 384 * 1536 / t / 1e9:5.0f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
