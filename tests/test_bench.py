"""The benchmark harness: its kernel-time breakdown and its config; the timed run itself is a GPU test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from flowhn.bench import CONF
from flowhn.perf.profile import kernel_category, profile_steps


@pytest.mark.parametrize(("kernel", "category"), [
    ("_scan_fwd_kernel", "ssm scan"),
    ("_summary_bwd_kernel", "ssm scan"),
    ("_selective_scan_chunked_bwd", "ssm scan"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "gemm"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "gemm"),
    ("triton_red_fused__log_softmax_backward_data_nll_loss_backward_0", "cross-entropy"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::index_copy_kernel_impl<OpaqueType<2>>", "gather/scatter"),
    ("triton_poi_fused_add_mul_silu_3", "elementwise/norm"),
    ("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>", "copy/cast"),
    ("some_unknown_kernel", "other"),
])
def test_kernel_names_fall_in_their_category(kernel, category):
    assert kernel_category(kernel) == category


def test_breakdown_sums_the_profiled_time():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.SiLU(), torch.nn.Linear(256, 8))
    x = torch.randn(64, 64)

    def step():
        model(x).logsumexp(-1).mean().backward()

    breakdown = profile_steps(step, steps=2, device=False)
    assert breakdown.total_ms > 0
    assert breakdown.total_ms == pytest.approx(sum(ms for _, _, ms, _ in breakdown.top_kernels))
    assert all(launches >= 1 for *_, launches in breakdown.top_kernels)
    text = breakdown.markdown("mlp")
    assert "| category | ms/step | % |" in text and breakdown.top_kernels[0][0] in text


def test_bench_config_composes_with_profile_and_eager_entries():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["scale=tiny", "profile=true",
                                          "entries=[{model: flowhn, split: fac_split, compile: false}]"])
    assert cfg.profile and cfg.entries[0].compile is False and cfg.scale.name == "tiny"


def test_bench_refuses_to_run_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "flowhn.bench", "scale=tiny"], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1], timeout=120)
    assert result.returncode != 0 and "needs a CUDA GPU" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_times_and_profiles_a_tiny_model(tmp_path):
    out = tmp_path / "bench.md"
    result = subprocess.run(
        # tiny's own sequence length: at 1024 its 4 blocks are too few for fac_split's window to cover it
        [sys.executable, "-m", "flowhn.bench", "scale=tiny", "seq_len=128", "steps=2", "warmup=1", "profile=true",
         "peers=[]",
         "entries=[{model: flowhn, split: fac_split, compile: false}, {model: llama},"
         " {model: llama, compile_mode: reduce-overhead}]", f"output={out}",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert text.count("| ok |") == 3, text
    assert "| flowhn/fac_split (eager) |" in text and "| llama |" in text and "GPU busy %" in text
    assert "| llama/reduce-overhead |" in text
    assert text.count("GPU kernel time") == 3 and "| ssm scan |" in text and "| attention |" in text
