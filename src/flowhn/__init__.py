"""FlowHN Lab: parallel hybrid (attention ∥ SSM) language models and their baselines."""

from __future__ import annotations

__version__ = "0.1.0"


def build_model(cfg):
    """Build the architecture ``cfg.model`` names (its ``_target_`` is the builder) from the
    composed train config; every dim is checked first and a bad one raises ``ConfigError``."""
    from hydra.utils import get_method

    from flowhn.errors import ConfigError

    target = cfg.model.get("_target_")
    if not target:
        raise ConfigError("model._target_: missing; a model config must name its builder")
    return get_method(target)(cfg)


__all__ = ["build_model", "__version__"]
