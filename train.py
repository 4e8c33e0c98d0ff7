"""Train one model: ``python train.py model=flowhn scale=350m split=fac_split fusion=gated``.

Hydra composes ``conf/train.yaml``; ``flowhn.training.run`` does the work. A config or input
error exits with status 2 and one line naming the key or file, before anything is written.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from flowhn.errors import ConfigError
from flowhn.quiet import silence_known_noise
from flowhn.startup import freeze_at_exit, imports_without_gc

freeze_at_exit()  # first of the atexit hooks, so it runs last (flowhn/startup.py says why)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    silence_known_noise()  # first: in the job's own process (a SLURM job does not run this module's top)
    with imports_without_gc():  # torch here, Lightning below: flowhn/startup.py says why
        from flowhn.training.checks import check_config, world_size

    try:
        # Lightning DDP inside a multirun process hangs or re-runs the sweep (Lightning #11300):
        # several devices per job need a launcher that gives each job its own process group.
        in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
        if in_sweep and world_size(cfg) > 1 and not {"TORCHELASTIC_RUN_ID", "SLURM_NTASKS"} & set(os.environ):
            raise ConfigError("trainer.devices: multi-device jobs in a sweep need hydra/launcher=torchrun or slurm")
        with imports_without_gc():
            check_config(cfg)  # before Lightning's import (~10 s): a bad device or model setting fails in seconds
            from flowhn.training.run import run

        run(cfg, Path(HydraConfig.get().runtime.output_dir), config_checked=True)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
