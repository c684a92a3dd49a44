"""bench_decode with the int4 tensor-core GEMV tiles (quant_gemv.py's dot and swap) launched with
PDL's attribute ("on") or in plain stream order as the engine runs them ("off"); every other
launch as configured (KILN_PDL). Run each way in one call to compare on the same GPU:

    python3 bench/ablate_int4_tiles_pdl.py off --model llama3-8b --quick --skip-hf \\
        --skip-reference --quant W4A16_AWQ --loads 64x128/128 --json off.json
    python3 bench/ablate_int4_tiles_pdl.py on  ... --json on.json

Run 30h (H100): W4A16 64 x 128/128 at 1.064x of bf16 "off", 0.977x "on" (bench/NOTES.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("on", "off"):
        print(__doc__, file=sys.stderr)
        return 2
    from runtime_service.model.kernels import quant_gemv

    quant_gemv.INT4_TILES_PROGRAMMATIC = argv[0] == "on"
    import bench_decode

    return bench_decode.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
