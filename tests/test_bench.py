"""The benchmark harness: its kernel-time breakdown and its config; the timed run itself is a GPU test."""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import small_cfg
from flowhn.bench import CONF
from flowhn.models.lm import LayerSpec, make_attention, make_ssm
from flowhn.nn.split import flop_aware_ratio
from flowhn.perf.profile import kernel_category, profile_steps


@pytest.mark.parametrize(("kernel", "category"), [
    ("_scan_fwd_kernel", "ssm scan"),
    ("_summary_bwd_kernel", "ssm scan"),
    ("_selective_scan_chunked_bwd", "ssm scan"),
    ("_state_pass_kernel", "ssm scan"),  # the Triton SSD's pass over chunks (was "other" until the sixth session)
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "gemm"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "gemm"),
    ("triton_red_fused__log_softmax_backward_data_nll_loss_backward_0", "cross-entropy"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("triton_for_fused_0", "optimizer"),
    ("void at::native::index_copy_kernel_impl<OpaqueType<2>>", "gather/scatter"),
    ("triton_poi_fused_add_mul_silu_3", "elementwise/norm"),
    ("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>", "copy/cast"),
    ("triton_poi_fused__to_copy_t_14", "copy/cast"),  # a weight cast
    ("triton_red_fused__to_copy__unsafe_view_add_mean_mul_pow_rsqrt_view_19", "elementwise/norm"),  # RMSNorm
    ("triton_per_fused__to_copy_add_div_expand_mul_pow_sum_view_4", "elementwise/norm"),  # its backward
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


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 32, width: int = 16):
        super().__init__()
        self.embed, self.lm_head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab, bias=False)

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.embed(ids)))


def test_optimizer_in_graph_takes_the_same_steps_as_the_eager_optimizer():
    """The bench's ``optimizer_in_graph`` row option: AdamW's step compiled (capturable, tensor lr) moves
    the weights as the eager AdamW does, step for step."""
    from flowhn.bench import make_train_step

    weights = []
    for in_graph in (False, True):
        torch.manual_seed(0)
        model = TinyLM()
        torch._dynamo.reset()
        step = make_train_step(model, 32, batch=2, seq_len=8, compiled=True, device="cpu", optimizer_in_graph=in_graph)
        for _ in range(3):
            step()
        weights.append([p.detach().clone() for p in model.parameters()])
    for eager, compiled in zip(*weights):
        assert not torch.equal(eager, TinyLM().embed.weight)  # it moved
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="optimizer_in_graph needs a compiled row"):
        make_train_step(TinyLM(), 32, batch=2, seq_len=8, compiled=False, device="cpu", optimizer_in_graph=True)


def test_a_row_frees_its_model_before_the_next_row_starts():
    """A compiled model sits in reference cycles (on CPU a tiny compiled llama stays alive after its row
    until gc.collect()), so ``measure`` collects after its row has returned: the next row's memory
    baseline must not hold the last row's weights (on an H200 a 1B row started with 3.88 GiB of them).
    Python's own collector is off here, so only ``measure`` can free the model."""
    import gc
    import weakref

    from flowhn.bench import measure

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["scale=tiny", "device=cpu", "steps=1", "warmup=1", "seq_len=8",
                                          "batch_size=2", "profile=false"])
    built = []

    def make():
        model = TinyLM()
        model.cycle = [model]  # unreachable after the row only as a cycle, like a compiled model
        built.append(weakref.ref(model))
        return "tiny", model, 1.0, 32, False, {}

    collecting = gc.isenabled()
    gc.disable()
    try:
        row, _ = measure(make, cfg, peak=None)
        assert row.status == "ok" and row.tok_s > 0
        assert built[0]() is None, "the row's model outlived measure()"
    finally:
        if collecting:
            gc.enable()


def test_bench_config_composes_with_profile_and_eager_entries():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["scale=tiny", "profile=true",
                                          "entries=[{model: flowhn, split: fac_split, compile: false}]"])
    assert cfg.profile and cfg.entries[0].compile is False and cfg.scale.name == "tiny"


@pytest.mark.parametrize(("overrides", "entry", "label"), [
    (["scale=135m"], {"model": "llama"}, "llama/reduce-overhead"),  # auto: 135m's mode, as train.py
    (["scale=135m"], {"model": "flowhn", "split": "fac_split", "compile_mode": None}, "flowhn/fac_split"),
    (["scale=135m"], {"model": "llama", "compile": False}, "llama (eager)"),
    (["scale=135m"], {"model": "llama", "compile": "blocks"}, "llama (blocks compiled)"),
    (["scale=135m", "compile_mode=null"], {"model": "llama"}, "llama"),
    (["scale=135m", "device=cpu"], {"model": "llama"}, "llama"),
    (["scale=1b"], {"model": "llama"}, "llama"),
    (["scale=1b"], {"model": "llama", "compile_mode": "reduce-overhead"}, "llama/reduce-overhead"),
])
def test_rows_take_the_scales_compile_mode_unless_they_set_one(overrides, entry, label):
    from flowhn.bench import entry_label

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        bench = compose("bench", overrides=overrides)
    assert entry_label(entry, bench) == label


def test_bench_refuses_to_run_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "flowhn.bench", "scale=tiny"], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1], timeout=120)
    assert result.returncode != 0 and "needs a CUDA GPU" in result.stderr


def test_isolate_times_each_row_in_its_own_process(tmp_path):
    """isolate=true's row process (on the CPU: the same code path, wall-clock timed), started as
    main() starts it: the parent's overrides without its row list, output or run dir; the row and
    its log come back."""
    from flowhn.bench import measure_in_process

    parent = ["device=cpu", "scale=tiny", "seq_len=32", "batch_size=2", "steps=1", "warmup=1", "compile=false",
              "isolate=true", "entries=[{model: llama}, {model: mamba}]", "peers=[hf_llama]", f"output={tmp_path}/x.md",
              f"hydra.run.dir={tmp_path}/run"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        bench = compose("bench", overrides=parent[:-1])
    row, breakdown = measure_in_process(0, "entry", {"model": "llama", "data.batch_size": 2}, bench, parent,
                                        tmp_path / "rows")
    assert row.name == "llama/data.batch_size=2" and row.status == "ok" and row.tok_s > 0 and breakdown is None
    command = shlex.split((tmp_path / "rows" / "row_0.log").read_text().splitlines()[0][2:])
    assert command[1:3] == ["-m", "flowhn.bench"]
    assert "entries=[{model: 'llama', data.batch_size: 2}]" in command and "peers=[]" in command
    assert "seq_len=32" in command and "isolate=false" in command
    keys = [arg.split("=", 1)[0] for arg in command[3:]]
    assert "output" not in keys and keys.count("hydra.run.dir") == 1 and keys.count("row_json") == 1
    assert keys.count("entries") == 1 and keys.count("peers") == 1


def test_a_row_whose_process_dies_is_kept_as_an_error(tmp_path, monkeypatch):
    from flowhn import bench as bench_module

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["scale=tiny", "isolate=true"])
    died = subprocess.CompletedProcess([], -9, "", "Traceback ...\ntorch.OutOfMemoryError: host memory\n")
    monkeypatch.setattr(bench_module.subprocess, "run", lambda cmd, **kw: died)
    row, breakdown = bench_module.measure_in_process(3, "entry", {"model": "flowhn", "split": "fa_split"}, cfg,
                                                     ["scale=tiny", "entries=[{model: llama}]"], tmp_path)
    assert row.name == "flowhn/fa_split" and breakdown is None
    assert row.status == "error: its process exited -9: torch.OutOfMemoryError: host memory"
    assert (tmp_path / "row_3.log").read_text().startswith("$ ")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_times_and_profiles_a_tiny_model(tmp_path):
    out = tmp_path / "bench.md"
    result = subprocess.run(
        # tiny's own sequence length: at 1024 its 4 blocks are too few for fac_split's window to cover it
        [sys.executable, "-m", "flowhn.bench", "scale=tiny", "seq_len=128", "steps=2", "warmup=1", "profile=true",
         "peers=[]",
         "entries=[{model: flowhn, split: fac_split, compile: false}, {model: llama},"
         " {model: llama, compile_mode: reduce-overhead},"
         " {model: llama, compile_mode: reduce-overhead, optimizer_in_graph: true}]", f"output={out}",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert text.count("| ok |") == 4, text
    assert "| flowhn/fac_split (eager) |" in text and "| llama |" in text and "GPU busy %" in text
    assert "| llama/reduce-overhead |" in text and "| llama/optimizer_in_graph=True/reduce-overhead |" in text
    assert text.count("GPU kernel time") == 4 and "| ssm scan |" in text and "| attention |" in text


LADDER = "seqlen_ladder=[32,64]"


def run_tiny_ladder(csv_path, *overrides):
    """The ladder on the CPU at tiny scale, in this process (as ``python -m flowhn.bench device=cpu``)."""
    from flowhn.bench import run_ladder

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        bench = compose("bench", overrides=[
            "device=cpu", "scale=tiny", LADDER, "tokens_per_step=64", "steps=1", "warmup=1", "compile=false",
            "peers=[]", "entries=[{model: flowhn, split: fa_split}, {model: llama}]", *overrides])
        return run_ladder(bench, peak=None, csv_path=csv_path)


def test_seqlen_ladder_writes_one_row_per_model_and_length_with_the_split_ratio_there(tmp_path):
    from flowhn.bench import LADDER_COLUMNS, ladder_markdown

    out = tmp_path / "ladder.csv"
    rows = run_tiny_ladder(out, "entries=[{model: flowhn, split: fa_split}]")
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == LADDER_COLUMNS == ("model", "seq_len", "batch_size", "tok_s", "mfu",
                                                              "fa_ratio", "status")
        written = list(reader)
    assert [(r["model"], int(r["seq_len"]), int(r["batch_size"])) for r in written] == [
        ("flowhn/fa_split", 32, 2), ("flowhn/fa_split", 64, 1)]
    assert all(r["status"] == "ok" and float(r["tok_s"]) > 0 and r["mfu"] == "" for r in written)  # no CPU peak
    by_key = {(r["model"], int(r["seq_len"])): r for r in written}
    # the ratio each length's model used: the branches' FLOPs at that length (attention's grow with T)
    ratios = {}
    for t in (32, 64):
        m = small_cfg("flowhn", "split=fa_split", seq_len=t).model
        with torch.device("meta"):
            ratios[t] = flop_aware_ratio(make_attention(m, m.d_model, LayerSpec("attention")).flops(t).total,
                                         make_ssm(m, m.d_model).flops(t).total)
        assert float(by_key[("flowhn/fa_split", t)]["fa_ratio"]) == pytest.approx(ratios[t], abs=1e-4)
    assert ratios[64] < ratios[32] - 0.01  # attention's FLOPs per token grow with T: its share falls
    table = ladder_markdown(rows, "### tiny")
    assert "| model | 32 | 64 |" in table and "| flowhn/fa_split |" in table
    assert f"| flowhn/fa_split | {ratios[32]:.4f} | {ratios[64]:.4f} |" in table


def test_seqlen_ladder_resumes_skipping_rows_in_the_csv_and_retrying_failed_ones(tmp_path):
    from flowhn.bench import read_ladder_csv, write_ladder_csv

    out = tmp_path / "ladder.csv"
    kept = {"model": "llama", "seq_len": 32, "batch_size": 2, "tok_s": "123.0", "mfu": "", "fa_ratio": "",
            "status": "ok"}
    failed = {**kept, "seq_len": 64, "batch_size": 1, "tok_s": "", "status": "error: RuntimeError: boom"}
    write_ladder_csv(out, {("llama", 32): kept, ("llama", 64): failed})
    run_tiny_ladder(out, "entries=[{model: llama}]")
    rows = read_ladder_csv(out)
    assert rows[("llama", 32)]["tok_s"] == "123.0"  # measured before: not run again
    assert rows[("llama", 64)]["status"] == "ok" and float(rows[("llama", 64)]["tok_s"]) > 0
    assert rows[("llama", 64)]["fa_ratio"] == ""  # no split


def test_seqlen_ladder_refuses_a_length_that_does_not_divide_the_tokens_per_step(tmp_path):
    from flowhn.errors import ConfigError

    with pytest.raises(ConfigError, match="^tokens_per_step: 100 is not a multiple of seq_len 32"):
        run_tiny_ladder(tmp_path / "x.csv", "tokens_per_step=100")
