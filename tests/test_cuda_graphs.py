"""compile_mode=reduce-overhead (CUDA graphs) through the training module and Lightning's loop: the
optimizer step, gradient clipping, loss logging and a validation pass sit between graph replays, and
the losses equal those of the default compile mode."""

from __future__ import annotations

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
