"""``python -m stedge.bench.peer_export MODEL BACKEND OUT [TASK]``: sentence-transformers' own onnx / openvino export
(TASK ``reranking``: of a cross-encoder; ``embedding`` by default).

The harness runs this in the peer interpreter (``stedge bench --peer-python``), writing into the temporary
folder its ``atomic_dir`` gives, so a failed export leaves nothing half-written in the cache.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Export MODEL for BACKEND into OUT; usage errors exit 2, a failed export raises (exit 1, traceback on stderr)."""
    args = sys.argv[1:] if argv is None else argv
    tasks = ([], ["embedding"], ["reranking"])
    if len(args) not in (3, 4) or args[1] not in ("onnx", "openvino") or args[3:] not in tasks:
        print(
            "usage: python -m stedge.bench.peer_export MODEL_FOLDER onnx|openvino OUT_FOLDER [embedding|reranking]",
            file=sys.stderr,
        )
        return 2
    from .peer import export_st_peer

    export_st_peer(args[0], args[1], args[2], *args[3:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
