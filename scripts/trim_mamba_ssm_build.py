#!/usr/bin/env python
"""Trim the causal-conv1d and mamba-ssm source trees for one quick sm_90 build (issue 13's reference anchor).

  python3 scripts/trim_mamba_ssm_build.py /tmp/mamba_build     # the unpacked sdists sit in that folder

Their setup.py files compile every kernel for sm_75 through sm_121 (eight or more architectures), and
mamba-ssm's selective scan for fp32/fp16/bf16 inputs with real and complex weights (10 CUDA files): a
build of over 10 minutes on 16 cores (../shared/gpu/README.md). A device call is 10 minutes, so:

* both setup.py: only ``-gencode arch=compute_90,code=sm_90`` (the H100/H200);
* mamba-ssm: only fp32 and bf16 inputs with real weights (what our tests and bench run): the fp16 and
  complex .cu files leave the build, and the C++ dispatch loses their branches (an fp16 input or a
  complex A then raises mamba-ssm's own "not implemented" error instead of failing to link);
* causal-conv1d: likewise only fp32 and bf16 inputs and weights (its templates' fp16 instantiations and
  dispatch branches go), and only width 4 (every model here has d_conv = 4; another width raises).

Every edit is checked to have matched; the script exits non-zero (naming the file) if a release moved
the text it edits. On the 16-core kind (twenty-first session, call B) mamba-ssm built in 119 s this way;
causal-conv1d's backward, then still with fp16, did not finish in 330 s.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

GENCODE = re.compile(r'(\s*)cc_flag\.append\("-gencode"\)\s*\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)')


def only_sm90(setup: Path) -> None:
    text = setup.read_text()
    arches = [m.group(2) for m in GENCODE.finditer(text)]
    if "90" not in arches:
        sys.exit(f"{setup}: no sm_90 gencode pair found (found {arches})")
    # Each other pair becomes ``pass``: some sit alone under an ``if bare_metal_version >= ...:``.
    text = GENCODE.sub(lambda m: m.group(0) if m.group(2) == "90" else m.group(1) + "pass", text)
    setup.write_text(text)
    print(f"{setup}: gencode {arches} -> ['90']")


def drop_sources(setup: Path, words: tuple[str, ...]) -> None:
    lines = setup.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not (".cu\"" in line and any(w in line for w in words))]
    dropped = len(lines) - len(kept)
    if dropped == 0:
        sys.exit(f"{setup}: no source files with {words} in their names")
    setup.write_text("".join(kept))
    print(f"{setup}: dropped {dropped} .cu sources ({', '.join(words)})")


def drop_branch(source: Path, pattern: str, what: str) -> None:
    text, n = re.subn(pattern, "", source.read_text(), count=1, flags=re.S)
    if n != 1:
        sys.exit(f"{source}: the {what} dispatch branch was not found")
    source.write_text(text)
    print(f"{source}: dropped the {what} dispatch branch")


def drop_half_instantiations(source: Path) -> None:
    lines = source.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not (line.startswith("template void") and "at::Half" in line)]
    if len(kept) == len(lines):
        sys.exit(f"{source}: no fp16 template instantiations found")
    source.write_text("".join(kept))
    print(f"{source}: dropped {len(lines) - len(kept)} fp16 instantiations")


WIDTHS = re.compile(r"if \(params\.width == 2\) \{.*?\} else if \(params\.width == 4\) \{", re.S)


def only_width_4(source: Path) -> None:
    text, n = WIDTHS.subn('if (params.width != 4) {\n        TORCH_CHECK(false, "causal_conv1d: this trimmed build has '
                          'width 4 only (scripts/trim_mamba_ssm_build.py)");\n    } else {', source.read_text())
    if n == 0:
        sys.exit(f"{source}: no width dispatch found")
    source.write_text(text)
    print(f"{source}: {n} width dispatch(es) cut to width 4")


def main(root: Path) -> None:
    conv = next(root.glob("causal_conv1d-*"), None)
    mamba = next(root.glob("mamba_ssm-*"), None)
    if conv is None or mamba is None:
        sys.exit(f"{root}: needs the unpacked causal_conv1d-* and mamba_ssm-* sdists")
    only_sm90(conv / "setup.py")
    only_sm90(mamba / "setup.py")
    drop_sources(mamba / "setup.py", ("fp16", "complex"))
    dispatch = mamba / "csrc" / "selective_scan" / "selective_scan.cpp"
    # if (ITYPE == Half) { using input_t = at::Half; f(); } else if (ITYPE == BFloat16) ... -> if (ITYPE == BFloat16) ...
    drop_branch(dispatch, r"if \(ITYPE == at::ScalarType::Half\) \{.*?\} else (?=if \(ITYPE == at::ScalarType::BFloat16\))",
                "fp16 input")
    # } else if (WTYPE == ComplexFloat) { using weight_t = c10::complex<float>; f(); } else { error } -> } else { error }
    drop_branch(dispatch, r"\} else if \(WTYPE == at::ScalarType::ComplexFloat\) \{[^}]*?(?=\} else \{)",
                "complex weight")
    # causal-conv1d: fp32 and bf16 inputs and weights (4 of its 9 type pairs); its backward file alone took
    # over 330 s with all nine on the 16-core kind (twenty-first session, call B).
    conv_dispatch = conv / "csrc" / "causal_conv1d.cpp"
    for kind in ("ITYPE", "WTYPE"):
        drop_branch(conv_dispatch, rf"if \({kind} == at::ScalarType::Half\) \{{.*?\}} else (?=if \({kind} == at::ScalarType::BFloat16\))",
                    f"fp16 {'input' if kind == 'ITYPE' else 'weight'}")
    for name in ("causal_conv1d_fwd.cu", "causal_conv1d_bwd.cu", "causal_conv1d_update.cu"):
        drop_half_instantiations(conv / "csrc" / name)
        only_width_4(conv / "csrc" / name)  # every Mamba here has d_conv = 4


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
