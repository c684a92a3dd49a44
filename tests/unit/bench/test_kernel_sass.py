"""bench/kernel_sass.py reads the main loop out of nvdisasm's listing (no GPU or Triton needed
for this part)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import kernel_sass  # noqa: E402

LISTING = """\
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/               @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   PRMT R8, R4, 0x7540, RZ ;
        /*0040*/               @!P1 FFMA R9, R8, R10, R9 ;
        /*0050*/                   ISETP.GE.AND P1, PT, R0, R11, PT ;
        /*0060*/              @!P1 BRA `(.L_x_1) ;
.L_x_0:
        /*0070*/                   STG.E desc[UR4][R12.64], R9 ;
.L_x_2:
        /*0080*/                   BRA `(.L_x_2);
        /*0090*/                   EXIT ;
"""


def test_the_hot_loop_is_the_longest_backward_branch_and_keeps_predicated_opcodes():
    assert kernel_sass.hot_loop(LISTING) == ["LDG", "PRMT", "FFMA", "ISETP", "BRA"]


def test_a_listing_without_a_loop_gives_nothing():
    assert kernel_sass.hot_loop("        /*0000*/                   EXIT ;\n") == []
