"""scripts/trim_mamba_ssm_build.py (issue 13's mamba-ssm anchor build) on a tree shaped like the causal-conv1d
1.7.0 and mamba-ssm 2.3.2 sdists: each edit lands where it should, the results still parse, and text that moved
in a release stops the script with the file's name instead of building everything."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("trim_mamba_ssm_build", ROOT / "scripts" / "trim_mamba_ssm_build.py")
trim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trim)

SETUP = '''
cc_flag = []
if True:
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_80,code=sm_80")
    if bare_metal_version >= Version("11.8"):
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_90,code=sm_90")
    if bare_metal_version >= Version("12.8"):
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_100,code=sm_100")
sources = [
    "csrc/selective_scan/selective_scan.cpp",
    "csrc/selective_scan/selective_scan_fwd_fp32.cu",
    "csrc/selective_scan/selective_scan_fwd_fp16.cu",
    "csrc/selective_scan/selective_scan_bwd_bf16_real.cu",
    "csrc/selective_scan/selective_scan_bwd_bf16_complex.cu",
]
'''


def dispatch(kind: str, types: list[tuple[str, str]]) -> str:
    branches = " else ".join(f"if ({kind} == at::ScalarType::{name}) {{ \\\n    using t = {cpp}; \\\n    __VA_ARGS__(); \\\n}}"
                             for name, cpp in types)
    return f"#define DISPATCH_{kind}(…) \\\n{branches} else {{ \\\n    AT_ERROR(\"not implemented\"); \\\n}}\n"


HALF_BF16_FLOAT = [("Half", "at::Half"), ("BFloat16", "at::BFloat16"), ("Float", "float")]
PAIRS = [(i, w) for i in ("float", "at::Half", "at::BFloat16") for w in ("float", "at::Half", "at::BFloat16")]
CONV_CU = """template<typename input_t, typename weight_t>
void causal_conv1d_fwd_cuda(ConvParamsBase &params, cudaStream_t stream) {
    if (params.width == 2) {
        launch<128, 2, input_t, weight_t>(params, stream);
    } else if (params.width == 3) {
        launch<128, 3, input_t, weight_t>(params, stream);
    } else if (params.width == 4) {
        launch<128, 4, input_t, weight_t>(params, stream);
    }
}
""" + "".join(f"template void causal_conv1d_fwd_cuda<{i}, {w}>(ConvParamsBase &params, cudaStream_t stream);\n"
              for i, w in PAIRS)


def sdist_tree(root: Path) -> tuple[Path, Path]:
    conv, mamba = root / "causal_conv1d-1.7.0", root / "mamba_ssm-2.3.2.post1"
    (conv / "csrc").mkdir(parents=True)
    (mamba / "csrc" / "selective_scan").mkdir(parents=True)
    (conv / "setup.py").write_text(SETUP)
    (mamba / "setup.py").write_text(SETUP)
    (mamba / "csrc" / "selective_scan" / "selective_scan.cpp").write_text(
        dispatch("ITYPE", HALF_BF16_FLOAT) + dispatch("WTYPE", [("Float", "float"), ("ComplexFloat", "c10::complex<float>")]))
    (conv / "csrc" / "causal_conv1d.cpp").write_text(dispatch("ITYPE", HALF_BF16_FLOAT) + dispatch("WTYPE", HALF_BF16_FLOAT))
    for name in ("causal_conv1d_fwd.cu", "causal_conv1d_bwd.cu", "causal_conv1d_update.cu"):
        (conv / "csrc" / name).write_text(CONV_CU)
    return conv, mamba


def test_the_trimmed_tree_builds_sm90_fp32_bf16_and_width_4_only(tmp_path):
    conv, mamba = sdist_tree(tmp_path)
    trim.main(tmp_path)
    for setup in (conv / "setup.py", mamba / "setup.py"):
        text = setup.read_text()
        ast.parse(text)  # a lone pair under its `if` became `pass`
        assert "arch=compute_90,code=sm_90" in text and "compute_80" not in text and "compute_100" not in text
    sources = mamba.joinpath("setup.py").read_text()
    assert "fwd_fp32.cu" in sources and "bwd_bf16_real.cu" in sources
    assert "fp16.cu" not in sources and "complex.cu" not in sources
    scan = mamba.joinpath("csrc", "selective_scan", "selective_scan.cpp").read_text()
    assert "at::Half" not in scan and "complex" not in scan
    assert "using t = at::BFloat16" in scan and "using t = float" in scan and "AT_ERROR" in scan
    conv_dispatch = conv.joinpath("csrc", "causal_conv1d.cpp").read_text()
    assert "Half" not in conv_dispatch and conv_dispatch.count("using t = at::BFloat16") == 2
    for name in ("causal_conv1d_fwd.cu", "causal_conv1d_bwd.cu", "causal_conv1d_update.cu"):
        cu = conv.joinpath("csrc", name).read_text()
        kept = [line for line in cu.splitlines() if line.startswith("template void")]
        assert len(kept) == 4 and not any("at::Half" in line for line in kept)
        assert "launch<128, 4," in cu and "launch<128, 2," not in cu and "launch<128, 3," not in cu
        assert 'if (params.width != 4) {\n        TORCH_CHECK(false' in cu  # another width raises, not a silent no-op


def test_text_that_moved_stops_the_script_with_the_files_name(tmp_path):
    conv, _ = sdist_tree(tmp_path)
    bwd = conv / "csrc" / "causal_conv1d_bwd.cu"
    bwd.write_text(bwd.read_text().replace("params.width == 2", "params.kernel_width == 2"))
    with pytest.raises(SystemExit, match="causal_conv1d_bwd.cu: no width dispatch found"):
        trim.main(tmp_path)
    with pytest.raises(SystemExit, match="needs the unpacked"):
        trim.main(tmp_path / "empty")
