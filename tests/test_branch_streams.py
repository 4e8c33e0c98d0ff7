"""model.branch_streams: the SSM branch of a ParallelBlock on a side CUDA stream, concurrent with
attention. It changes where the work runs, never what it computes."""

import contextlib

import pytest
import torch

import flowhn
from conftest import compose_train, small_cfg
from flowhn.nn import blocks
from flowhn.nn.blocks import ParallelBlock

SPLITS = ("no_split", "fac_split")


def logits_and_grads(cfg, streams: bool, device="cpu", autocast=False):
    cfg.model.branch_streams = streams
    torch.manual_seed(0)
    model = flowhn.build_model(cfg).to(device)
    assert all(b.branch_streams is streams for b in model.layers if isinstance(b, ParallelBlock))
    ids = torch.randint(0, cfg.scale.vocab_size, (2, cfg.data.seq_len), generator=torch.Generator().manual_seed(1))
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
        logits = model(ids.to(device))
    logits.float().pow(2).mean().backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters()}


def assert_same(one, other, tol=None):
    """Bitwise equal, or (tol) within tol of each tensor's largest magnitude."""
    (logits_a, grads_a), (logits_b, grads_b) = one, other
    assert grads_a.keys() == grads_b.keys()
    pairs = [("logits", logits_a, logits_b)] + [(n, grads_a[n], grads_b[n]) for n in grads_a]
    for name, a, b in pairs:
        assert a is not None and b is not None, name
        if tol is None:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("split", SPLITS)
def test_streams_flag_changes_nothing_on_cpu(split):
    cfg = small_cfg("flowhn", f"split={split}", "model.n_layers=4")
    assert_same(logits_and_grads(cfg, False), logits_and_grads(cfg, True))


class FakeStream:
    """Stands in for a CUDA stream on CPU: logs the syncs the two-stream path makes."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits {other.name}")


@pytest.mark.parametrize("arch,split", [("flowhn", "no_split"), ("flowhn", "fac_split"), ("hymba", "no_split")])
def test_two_stream_path_wiring_with_stub_streams(arch, split, monkeypatch):
    """The two-stream path, run on CPU with stub streams: same branch outputs as the plain path,
    the SSM branch on the side stream, fork before it, join and record_stream after it."""
    cfg = small_cfg(arch, f"split={split}", "model.n_layers=4")
    torch.manual_seed(0)
    block = flowhn.build_model(cfg).layers[1]
    x = torch.randn(2, cfg.data.seq_len, cfg.model.d_model)
    ctx = blocks.SequenceContext(x.shape[1], x.device)
    owned = block.split.indices(block.layer, x.shape[1], x.device)
    h_attn = block.attn_norm(x)
    expected = block._attention_branch(h_attn, ctx, owned), block._ssm_branch(x, h_attn, owned)

    log = []
    main, side = FakeStream("main", log), FakeStream("side", log)
    current = [main]

    @contextlib.contextmanager
    def on(stream):
        current.append(stream)
        yield
        current.pop()

    def spy(method):
        def wrapped(self, *args):
            log.append(f"{method.__name__} on {current[-1].name}")
            return method(self, *args)
        return wrapped

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(blocks, "side_stream", lambda device: side)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: log.append(f"record {t.shape[1]} {s.name}"))
    for name in ("_attention_branch", "_ssm_branch"):
        monkeypatch.setattr(ParallelBlock, name, spy(getattr(ParallelBlock, name)))
    got = block._branches_on_two_streams(x, ctx, owned)

    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    T, n_ssm = x.shape[1], x.shape[1] if owned is None else len(owned[1])
    shared = ["side waits main", f"record {T} side"] if block.ssm_norm is None else []
    assert log == ["side waits main", *shared, f"record {T} side", "_ssm_branch on side",
                   "_attention_branch on main", "main waits side", f"record {n_ssm} main"]


@pytest.mark.parametrize("arch", ["flowhn", "hymba"])
def test_config_key_defaults_off_and_composes(arch):
    assert compose_train(f"model={arch}").model.branch_streams is False
    assert compose_train(f"model={arch}", "model.branch_streams=true").model.branch_streams is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch,split", [("flowhn", "no_split"), ("flowhn", "fac_split"), ("hymba", "no_split")])
def test_streams_match_on_cuda_and_use_the_side_stream(arch, split, monkeypatch):
    cfg = small_cfg(arch, f"split={split}", "model.n_layers=4", seq_len=64)  # small_cfg sets ssm_backend=torch
    seen = []
    original = ParallelBlock._ssm_branch

    def spy(self, *args):
        seen.append(torch.cuda.current_stream())
        return original(self, *args)

    monkeypatch.setattr(ParallelBlock, "_ssm_branch", spy)
    main = torch.cuda.current_stream()
    off = logits_and_grads(cfg, False, "cuda", autocast=True)
    assert seen and all(s == main for s in seen)
    seen.clear()
    on = logits_and_grads(cfg, True, "cuda", autocast=True)
    torch.cuda.synchronize()
    assert len(seen) == cfg.model.n_layers and all(s != main for s in seen)
    assert torch.cuda.current_stream() == main
    assert_same(on, off, tol=2e-2)  # bf16 autocast
