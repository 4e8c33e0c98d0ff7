"""Architectures by name; each ``conf/model/<name>.yaml`` names its module's ``build``."""

ARCHITECTURES = ("flowhn", "llama", "mamba", "mamba2", "jamba", "shm", "hymba")
