"""Stand-ins for hydra-submitit-launcher when it is not installed (it is optional at run time:
a GPU image may carry only the core wheels).

``submitit_launchers`` then builds its launchers on :class:`BaseSubmititLauncher` below, so its
import succeeds and Hydra's plugin scan prints no "Error importing" warning; choosing
``hydra/launcher=slurm`` (or ``slurm_local``) composes against the placeholder configs below and
stops when Hydra creates the launcher, before any job is planned or written, with one line saying
what to install. (Hydra skips modules whose name starts with "_" in its scan; this one is only
imported by ``submitit_launchers``.)
"""

import sys
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher

BaseQueueConf = None  # only the real launcher's executor() reads it

# conf/hydra/launcher/slurm*.yaml extend these (normally hydra-submitit-launcher's schemas).
for _name, _target in (("submitit_slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher")):
    ConfigStore.instance().store(
        group="hydra/launcher", name=_name, provider="flowhn_launcher",
        node={"_target_": f"hydra_plugins.flowhn_launcher.submitit_launchers.{_target}"},
    )

CHOICE = {"slurm": "slurm", "local": "slurm_local"}  # _EXECUTOR -> hydra/launcher option


class BaseSubmititLauncher(Launcher):
    _EXECUTOR = "slurm"

    def __init__(self, **params: Any) -> None:
        print(f"config error: hydra/launcher={CHOICE.get(self._EXECUTOR, self._EXECUTOR)} needs "
              "hydra-submitit-launcher, which is not installed: pip install hydra-submitit-launcher",
              file=sys.stderr)
        raise SystemExit(2)

    def setup(self, **kwargs: Any) -> None:  # never reached: __init__ exits
        raise NotImplementedError

    def launch(self, job_overrides, initial_job_idx):  # never reached: __init__ exits
        raise NotImplementedError
