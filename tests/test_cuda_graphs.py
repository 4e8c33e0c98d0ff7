"""compile_mode=reduce-overhead (CUDA graphs) through the training module and Lightning's loop: the
optimizer step, gradient clipping, loss logging and a validation pass sit between graph replays, and
the losses equal those of the default compile mode. And a training step that never waits for the GPU
(CUDA's sync debug mode) outside the progress bar's redraws."""

from __future__ import annotations

import traceback
import warnings

import lightning as L
import pytest
import torch
import torch._dynamo
from omegaconf import OmegaConf

from tests.conftest import ROOT, small_cfg

STEPS = 8


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = []
        self.fused_loss = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.fused_loss.append(pl_module.uses_fused_loss)  # asked while on the GPU (fit's teardown moves it back)


def train_losses(arch: str, mode: str | None, overrides: tuple[str, ...] = ()) -> list[float]:
    from flowhn.training.module import CausalLMModule

    cfg = small_cfg(arch, f"paths.root_dir={ROOT}", "paths.output_dir=unused", *overrides, seq_len=64)
    cfg.model.ssm_backend = "auto"
    torch.manual_seed(0)
    module = CausalLMModule(OmegaConf.to_container(cfg, resolve=True))
    torch._dynamo.reset()
    module.compile_for_training("model", mode=mode)
    gen = torch.Generator().manual_seed(1)
    # Two training batches in turn (each step feeds the graph new inputs; repeated ones are learnt),
    # then two for validation.
    ids = torch.randint(0, cfg.scale.vocab_size, (4, 4, 65), generator=gen)
    batches = [{"input_ids": x[:, :-1], "labels": x[:, 1:]} for x in ids[[0, 1] * (STEPS // 2) + [2, 3]]]
    recorder = LossRecorder()
    trainer = L.Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=STEPS, gradient_clip_val=1.0,
        val_check_interval=STEPS // 2, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
    )
    loader = lambda items: torch.utils.data.DataLoader(items, batch_size=None)  # noqa: E731 (already batches)
    trainer.fit(module, train_dataloaders=loader(batches[:STEPS]), val_dataloaders=loader(batches[STEPS:]))
    assert all(recorder.fused_loss)  # auto: the fused LM head + loss on the GPU
    return recorder.losses


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "jamba"])
def test_reduce_overhead_trains_like_the_default_compile(arch):
    overrides = ("model.n_layers=4", "model.attn_period=4", "model.attn_offset=1") if arch == "jamba" else ()
    default = train_losses(arch, None, overrides)
    graphs = train_losses(arch, "reduce-overhead", overrides)
    assert len(default) == len(graphs) == STEPS
    assert default[-2] < default[0] - 0.05  # it learns (steps 0 and STEPS-2 see the same batch)
    torch.testing.assert_close(torch.tensor(graphs), torch.tensor(default), rtol=2e-2, atol=2e-2)


class SyncsPerStep(L.Callback):
    """CUDA's sync-debug warnings of each training batch, from its start to the next one's (so the
    optimizer step, logging and the progress bar after it count too), each with the Python stack
    that called the synchronizing operation."""

    def __init__(self):
        self.syncs: dict[int, list[str]] = {}
        self._catcher, self._batch = None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close()
        self._catcher, self._batch = warnings.catch_warnings(), batch_idx
        self._catcher.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._record
        self.syncs[batch_idx] = []
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer, pl_module):
        self._close()

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            stack = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack() if "warnings.py" not in f.filename]
            self.syncs[self._batch].append(" <- ".join(reversed(stack[-6:])))

    def _close(self):
        if self._catcher is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catcher.__exit__(None, None, None)
            self._catcher = None


@pytest.mark.gpu
@pytest.mark.parametrize("fused_loss", ["triton", "chunked", "liger"])
def test_training_steps_wait_for_the_gpu_only_when_the_progress_bar_redraws(fused_loss):
    """Forward, the NaN check of the loss, backward, clipping, the fused AdamW with its found_inf, the
    scheduler and logging queue their work without one host-device sync; only the progress bar's
    redraw (every refresh_rate batches) and Lightning's logging (every log_every_n_steps) read values."""
    from flowhn.kernels import cross_entropy
    from flowhn.training.callbacks import StepRateProgressBar
    from flowhn.training.module import CausalLMModule

    problem = cross_entropy.import_problem(fused_loss)  # liger: optional (scripts/gpu_wheels.sh fetches it)
    if problem is not None:
        pytest.skip(f"{fused_loss}: {problem}")
    cfg = small_cfg("llama", f"paths.root_dir={ROOT}", "paths.output_dir=unused", f"fused_loss={fused_loss}", seq_len=64)
    module = CausalLMModule(OmegaConf.to_container(cfg, resolve=True))
    torch._dynamo.reset()
    module.compile_for_training("model")
    ids = torch.randint(0, cfg.scale.vocab_size, (12, 4, 65), generator=torch.Generator().manual_seed(1))
    batches = [{"input_ids": x[:, :-1], "labels": x[:, 1:]} for x in ids]
    counter = SyncsPerStep()
    trainer = L.Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=len(batches), gradient_clip_val=1.0,
        limit_val_batches=0, log_every_n_steps=4, logger=L.pytorch.loggers.CSVLogger("/tmp/flowhn-sync-test"),
        enable_checkpointing=False, enable_model_summary=False,
        callbacks=[counter, StepRateProgressBar(refresh_rate=4)],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    # Batches 0-1 compile (and warm up); batches 3, 7, 11 end with a redraw and a log row.
    waited = {i: n for i, n in counter.syncs.items() if n and i not in (0, 1, 3, 7, 11)}
    if fused_loss == "liger":  # liger-kernel counts the valid tokens with .item() in its forward
        assert sorted(waited) == [2, 4, 5, 6, 8, 9, 10], waited
        assert all("liger_kernel" in "".join(stacks) for stacks in waited.values()), waited
    else:
        assert not waited, waited
