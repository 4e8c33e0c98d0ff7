"""Run a grid of train.py jobs into one sweep folder, then gather their results.

    python sweep.py split=no_split,ae_split,fa_split,fac_split scale=135m,350m,1b
    python sweep.py experiment=split_ablation           # a paper study (conf/experiment/)
    python sweep.py sweep=table1                        # a named grid (conf/sweep/)
    python sweep.py sweep=table1_smoke --dry-run        # show the plan, run nothing
    python sweep.py sweep=path/to/my_grids.yaml         # a grid file of your own

Design: this script is thin on purpose. The work happens in Hydra's own multirun,
``python train.py -m hydra/launcher=torchrun ...``: Hydra's sweeper expands the grid, and the
launcher (src/hydra_plugins/flowhn_launcher) runs each job as its own process (torchrun for
several devices), names job folders by their swept values, skips finished jobs, records
failures, and writes ``<sweep_dir>/results.csv``. So ``python train.py -m ...`` works the same
without this script. What this script adds:

* a stable sweep folder, ``logs/sweeps/<name>``, so running the same command again skips what
  is done and re-runs what failed (the name comes from ``--name``, the sweep or experiment
  name, plus a short hash of any further overrides);
* named grids (conf/sweep/<name>.yaml): a list of grids, each a product of axes, run into the
  same folder. Table 1 needs that: the baselines have no split, and the 1b scale has its own
  token budget. Several names (``sweep=archs,scales``) multiply their grids;
* a check of every grid's jobs before any of them starts (when there are several grids), and
  an exit status that says whether every job completed.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from flowhn.errors import ConfigError
from flowhn.quiet import silence_known_noise
from flowhn.sweeping import collect, override_key
from flowhn.sweeping.jobs import is_launch_only

silence_known_noise()  # before Lightning or lm-eval is imported

REPO = Path(__file__).resolve().parent
TRAIN = REPO / "train.py"
GRIDS_DIR = REPO / "conf" / "sweep"
_PLAIN = re.compile(r"^[A-Za-z0-9_.+\-/:]*$")


def hydra_value(value) -> str:
    """A YAML scalar as a Hydra override value (quoted only when it has to be)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    if _PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def grid_file(name: str) -> Path:
    """``sweep=NAME`` is conf/sweep/NAME.yaml; a value ending in .yaml is a path to a grid file."""
    if name.endswith(".yaml"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"sweep={name}: no such file")
        return path
    path = GRIDS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml")))
        raise ConfigError(f"sweep={name}: no conf/sweep/{name}.yaml (known: {known})")
    return path


def load_grids(name: str) -> list[list[str]]:
    """A grid file as override lists, one per grid. A list value is an axis (``key=choice(...)``,
    so it names the job folders even with one value), a scalar is fixed."""
    path = grid_file(name)
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    grids = spec.get("grids") if isinstance(spec, dict) else None
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) and g for g in grids):
        raise ConfigError(f"{path}: needs 'grids:', a list of key -> value(s) maps")
    common = [str(o) for o in spec.get("overrides") or []]
    out = []
    for grid in grids:
        overrides = list(common)
        for key, value in grid.items():
            if isinstance(value, list):
                if not value:
                    raise ConfigError(f"{path}: grid key '{key}' has no values")
                overrides.append(f"{key}=choice({','.join(hydra_value(v) for v in value)})")
            else:
                overrides.append(f"{key}={hydra_value(value)}")
        out.append(overrides)
    return out


def merge(*parts: list[str]) -> list[str]:
    """Overrides from several sources; for a key given twice the later one wins."""
    merged: dict[str, str] = {}
    for part in parts:
        for o in part:
            merged.pop(override_key(o), None)
            merged[override_key(o)] = o
    return list(merged.values())


def grid_runs(names: list[str], user: list[str]) -> list[list[str]]:
    """One override list per ``train.py -m`` call: the product of the named grids, then the
    command line's overrides on top (so ``scale=tiny`` replaces a grid's scale axis)."""
    if not names:
        return [user]
    runs = []
    for combo in itertools.product(*(load_grids(n) for n in names)):
        runs.append(merge(*combo, user))
    unique = {json.dumps(sorted(r)): r for r in runs}  # grids that became equal under `user`
    return list(unique.values())


def sweep_name(args: argparse.Namespace, names: list[str], user: list[str]) -> str:
    if args.name:
        return args.name
    given = {override_key(o): o.split("=", 1)[1] for o in user}
    base = "+".join(Path(n).stem for n in names) or given.get("experiment") or "sweep"
    rest = sorted(o for o in user if override_key(o) != "experiment" and not is_launch_only(override_key(o)))
    if rest or base == "sweep":
        base += "-" + hashlib.sha1("\n".join(rest).encode()).hexdigest()[:8]
    return base


def train_multirun(overrides: list[str], extra: list[str]) -> int:
    cmd = [sys.executable, str(TRAIN), "-m", *overrides, *extra]
    return subprocess.run(cmd, cwd=os.getcwd()).returncode


def preflight(runs: list[list[str]], common: list[str]) -> list[dict]:
    """Plan every grid's jobs without running any; refuse grids that claim one folder twice."""
    planned: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            plan_file = Path(tmp) / f"plan{i}.json"
            code = train_multirun(run, [*common, f"++hydra.launcher.plan_file={hydra_value(str(plan_file))}"])
            if code != 0 or not plan_file.exists():
                raise SystemExit(f"sweep.py: grid {i + 1} of {len(runs)} does not compose (see above)")
            for job in json.loads(plan_file.read_text())["jobs"]:
                other = planned.setdefault(job["name"], job)
                if other["identity"] != job["identity"]:
                    raise ConfigError(
                        f"two grids both write job '{job['name']}' with different overrides: "
                        f"{' '.join(other['identity'])} vs {' '.join(job['identity'])}"
                    )
    return list(planned.values())


def print_outcome(sweep_dir: Path) -> int:
    """Print one line per job; 0 when every job completed, 1 otherwise."""
    results = collect(sweep_dir)
    for r in results:
        s = r.summary
        detail = s.get("error") if r.status != "completed" else f"val_loss={s.get('val_loss')} tps={s.get('tps')}"
        print(f"  {r.status:9s} {r.name}  {detail}")
    bad = [r for r in results if r.status != "completed"]
    print(f"{len(results) - len(bad)}/{len(results)} jobs completed; results: {sweep_dir / 'results.csv'}")
    return 1 if bad or not results else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s [options] [override ...]")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for train.py; sweep=NAME[,NAME] picks conf/sweep grids")
    parser.add_argument("--name", help="sweep folder name (default: from the sweep/experiment and overrides)")
    parser.add_argument("--root", default=None, help="where sweep folders go (default: $PROJECT_ROOT or cwd, then logs/sweeps)")
    parser.add_argument("--dry-run", action="store_true", help="plan and check every job, run none")
    args = parser.parse_intermixed_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with train.py's

    names = [n for o in args.overrides if override_key(o) == "sweep" for n in o.split("=", 1)[1].split(",") if n]
    user = [o for o in args.overrides if override_key(o) != "sweep"]
    if any("=" not in o for o in user):
        raise ConfigError(f"overrides must be key=value, got: {' '.join(o for o in user if '=' not in o)}")
    runs = grid_runs(names, user)

    given = {override_key(o): o.split("=", 1)[1] for o in user}
    common = []
    if "hydra.sweep.dir" in given:
        sweep_dir = Path(given["hydra.sweep.dir"].strip("'\"")).resolve()
    else:
        root = Path(args.root or Path(os.environ.get("PROJECT_ROOT", os.getcwd())) / "logs" / "sweeps")
        sweep_dir = (root / sweep_name(args, names, user)).resolve()
        common.append(f"hydra.sweep.dir={hydra_value(str(sweep_dir))}")
    if "hydra/launcher" not in given:
        common.append("hydra/launcher=torchrun")
    print(f"Sweep {sweep_dir}: {len(runs)} grid(s)")

    if args.dry_run or len(runs) > 1:
        jobs = preflight(runs, common)
        for job in jobs:
            print(f"  {job['action']:8s} {job['name']}  ({job['reason']})")
        print(f"{len(jobs)} job(s) planned")
        if args.dry_run:
            return 0
    codes = [train_multirun(run, common) for run in runs]
    outcome = print_outcome(sweep_dir)
    if outcome == 0 and any(codes):
        # Every recorded job completed, yet a multirun failed: it stopped before launching.
        print(f"sweep.py: train.py -m exited with status {max(codes)} (see above)", file=sys.stderr)
        return max(codes)
    return outcome


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        print(f"sweep.py: {err}", file=sys.stderr)
        sys.exit(2)
