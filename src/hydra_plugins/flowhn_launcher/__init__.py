"""FlowHN Lab's Hydra launchers (``hydra/launcher=torchrun|local_parallel|slurm``).

Every launcher plans the whole sweep first (job folders named by their swept values, finished
jobs skipped, clashes refused), sets each job's W&B group and tags, and writes
``<sweep_dir>/results.csv`` when the jobs are done. ``torchrun_launcher`` runs jobs as local
processes; ``submitit_launchers`` hands them to SLURM through hydra-submitit-launcher. That
package is optional: without it the scan imports ``submitit_launchers`` quietly, and choosing
``hydra/launcher=slurm`` stops with one line saying what to install (``_submitit_missing``).

Hydra's plugin scan executes these modules without putting them in ``sys.modules``, so they
avoid ``from __future__ import annotations`` (dataclasses would fail to resolve it there).
"""
