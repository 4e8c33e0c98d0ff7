"""Train one model: ``python train.py model=flowhn scale=350m split=fac_split fusion=gated``.

Hydra composes ``conf/train.yaml``; ``flowhn.training.run`` does the work. A config or input
error exits with status 2 and one line naming the key or file, before anything is written.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowhn.errors import ConfigError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from flowhn.training.run import run

    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
