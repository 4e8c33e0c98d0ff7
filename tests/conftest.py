import atexit
import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Collection imports torch, Lightning, lm-eval and transformers in every worker: without the cyclic garbage
# collector running over them while they load, and frozen once loaded (gc.freeze: later collections and the
# worker's exit skip them; src/flowhn/startup.py says more). `pytest --collect-only` 23.5 -> 15 s here.
gc.disable()

# Under pytest-xdist (make test: -n 2) the workers share the cores. Torch's default of one OpenMP thread per
# core then puts more spinning threads than cores on the machine, which made CPU training steps 20-40x slower
# (two 2-thread runs on 2 cores: 4-6 s per step instead of 0.17 s). Each worker, and every process it starts
# (train.py, sweeps, DDP ranks inherit the variable), gets its share of the cores instead.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _parse_each_config_file_once() -> None:
    """Hydra reads and parses every config file a composition uses, on every composition (a new cache
    each time): about 20 YAML files a compose, some 350 composes in the suite's own processes, a third or
    more of each compose's time. Here a file's parse (the loaded config and its defaults list) is kept,
    keyed by where it was found and, for a file, by its modification time and size, and every load hands
    out a deep copy of it: each composition gets the objects a fresh read would make, and nothing Hydra
    does to one reaches another. Configs stored in Hydra's ConfigStore (structured://) can change while
    the tests run and are loaded as before; so is everything under Hydra versions other than 1.3.
    test_config, test_models and test_bad_inputs: 98-102 -> 72-80 s. Processes the tests start (train.py,
    sweep.py) compose as they always do."""
    import copy

    import hydra
    from hydra._internal.config_repository import ConfigRepository
    from hydra.core.object_type import ObjectType

    if not hydra.__version__.startswith("1.3."):
        return
    load = ConfigRepository.load_config
    parsed: dict = {}

    def stamp(source, config_path: str):
        if source.scheme() != "file":
            return None  # pkg://: files of installed packages
        name = config_path if config_path.endswith(".yaml") else f"{config_path}.yaml"
        stat = os.stat(os.path.join(source.path, name))
        return stat.st_mtime_ns, stat.st_size

    def load_config(self, config_path: str):
        source = self._find_object_source(config_path=config_path, object_type=ObjectType.CONFIG)
        if source is None or source.scheme() not in ("file", "pkg"):
            return load(self, config_path)
        key = (source.scheme(), source.path, config_path, stamp(source, config_path))
        if key not in parsed:
            parsed[key] = load(self, config_path)
        return copy.deepcopy(parsed[key])

    ConfigRepository.load_config = load_config


_parse_each_config_file_once()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ARCHS = ("flowhn", "llama", "mamba", "mamba2", "jamba", "shm", "hymba")
SPLITS = ("no_split", "ae_split", "fa_split", "fac_split")
FUSIONS = ("concat_proj", "mean", "norm_mean", "gated")
SCALES = ("tiny", "135m", "350m", "1b")


def compose_train(*overrides: str):
    """The train config exactly as ``python train.py <overrides>`` composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=False)


def small_cfg(arch: str, *overrides: str, seq_len: int = 24):
    """A tiny config with a short sequence, small enough for exhaustive CPU tests."""
    if arch == "hymba" and not any(o.startswith("model.window=") for o in overrides):
        overrides = ("model.window=8", *overrides)  # the tiny default window exceeds these short sequences
    cfg = compose_train(f"model={arch}", "scale=tiny", f"data.seq_len={seq_len}", *overrides)
    with open_dict(cfg):
        cfg.model.ssm_backend = "torch"
    return cfg


# The default run, shortened: 30 steps, validation at 15 and 30 (train.log_every_n_steps stays the default 10).
DEFAULT_RUN_STEPS, DEFAULT_RUN_SEQ_LEN, DEFAULT_RUN_BATCH = 30, 64, 8
DEFAULT_RUN_OVERRIDES = (
    f"trainer.max_steps={DEFAULT_RUN_STEPS}", f"data.seq_len={DEFAULT_RUN_SEQ_LEN}",
    f"data.batch_size={DEFAULT_RUN_BATCH}", "callbacks.throughput.warmup_steps=2", "callbacks.throughput.window=5",
    "trainer.val_check_interval=15", "trainer.limit_val_batches=2",
)


@pytest.fixture(scope="session")
def default_train_py_run(tmp_path_factory):
    """(run dir, finished process) of one ``python train.py`` with the default config, as a user starts it: no
    W&B key, W&B neither forced offline nor silenced (the lines above set both for the other tests), from a
    folder that is not a git checkout. One run serves the tests of its artifacts (test_train_e2e) and of its
    console (test_hardening). Under pytest-xdist those files may land on different workers: the workers'
    temporary folders are siblings, and the first to get there runs it for both (the other waits on the lock)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent
    cwd = shared / "default_train_py"
    with FileLock(str(cwd) + ".lock"):
        if not (cwd / "result.json").exists():
            cwd.mkdir(exist_ok=True)
            env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SILENT")}
            proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={cwd / 'run'}",
                                   *DEFAULT_RUN_OVERRIDES], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=600)
            result = {"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
            (cwd / "result.json").write_text(json.dumps(result))
        result = json.loads((cwd / "result.json").read_text())
    return cwd / "run", subprocess.CompletedProcess(**result)


def assert_errors_below(errors: dict, tol: float) -> None:
    """Every relative error in ``errors`` (name -> value) is at most ``tol``; a NaN fails too."""
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


LEAN_TRITON_INTERPRETER = ROOT / "tests" / "lean_triton_interpreter.py"


# The interpreted scripts' server (one a pytest worker, started by the first script): torch, its compiler and
# Triton are imported once, with the garbage collector off and then frozen as train.py does
# (src/flowhn/startup.py), and the interpreter made lean (lean_triton_interpreter.py). Each request is one
# script, run in a fork of the server: a process of its own, as ``python -c script *args`` after those imports
# would be (its own sys.argv and __main__, the caller's environment variables, stdout and stderr to files, its
# exit status), minus the 4-5 s of imports each script's interpreter spent before (eight scripts in the suite).
# The fork exits without the interpreter's final collections (os._exit), which its frozen imports made short
# anyway. A server whose imports may have read other values than the caller's now (_IMPORT_TIME_ENV) is
# replaced; the variables the tests' own runs set (Lightning's PL_GLOBAL_SEED, ...) leave it be.
_INTERPRETER_SERVER = """
import json, os, sys, traceback, types
from flowhn.startup import freeze_at_exit, imports_without_gc
freeze_at_exit()
with imports_without_gc():
    import torch, torch._dynamo, triton  # noqa
    import runpy; runpy.run_path({lean!r})
requests, replies = sys.stdin, sys.stdout
for line in requests:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = ["-c", *request["args"]]
            sys.modules["__main__"] = main = types.ModuleType("__main__")
            exec(compile(request["script"], "<string>", "exec"), main.__dict__)
            code = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps(os.waitstatus_to_exitcode(status)) + "\\n")
    replies.flush()
"""


# Environment variables that torch, its compiler, Triton, OpenMP and Python read as they are imported or start.
_IMPORT_TIME_ENV = ("TRITON", "TORCH", "PYTORCH", "OMP_", "KMP_", "MKL_", "CUDA", "PYTHON", "LD_")


def _interpreter_env() -> dict[str, str]:
    return dict(os.environ, TRITON_INTERPRET="1")  # TRITON_INTERPRET: read by Triton's import, in the server


def _import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_IMPORT_TIME_ENV)}


class _TritonInterpreterServer:
    def __init__(self):
        self.env = _interpreter_env()
        self.folder = tempfile.TemporaryDirectory(prefix="flowhn-interpreter-")
        self.log = Path(self.folder.name) / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _INTERPRETER_SERVER.format(lean=str(LEAN_TRITON_INTERPRETER))], env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)

    def run(self, script: str, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
        out, err = Path(self.folder.name) / "stdout", Path(self.folder.name) / "stderr"
        self.proc.stdin.write(json.dumps({"script": script, "args": list(args), "env": _interpreter_env(),
                                          "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.close()
            raise subprocess.TimeoutExpired(["python", "-c", "<script>", *args], timeout)
        reply = self.proc.stdout.readline()
        if not reply:
            self.close()
            raise RuntimeError(f"the Triton interpreter's server ended: {self.log.read_text()[-3000:]}")
        return subprocess.CompletedProcess(args, json.loads(reply), out.read_text(), err.read_text())

    def close(self) -> None:
        """Ends the server and any script it is running (their own process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.folder.cleanup()


_interpreter_server: _TritonInterpreterServer | None = None


def run_in_triton_interpreter(script: str, *args: str, timeout: float = 300) -> str:
    """stdout of ``python -c script *args`` with TRITON_INTERPRET=1: Triton reads it when it is first
    imported, so the kernels' CPU runs need a process of their own, here a fork of the worker's interpreter
    server (_INTERPRETER_SERVER says what it has imported). A failing script fails the test."""
    global _interpreter_server
    if _interpreter_server is not None and (
            _interpreter_server.proc.poll() is not None
            or _import_time_env(_interpreter_server.env) != _import_time_env(_interpreter_env())):
        _interpreter_server.close()  # ended, or its imports saw other values of these variables
        _interpreter_server = None
    if _interpreter_server is None:
        _interpreter_server = _TritonInterpreterServer()
        atexit.register(_interpreter_server.close)
    proc = _interpreter_server.run(script, args, timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def hf_jamba_moe_like(ours):
    """HF transformers' JambaSparseMoeBlock (eval) holding the router and expert weights of our ``MoE``:
    the reference our dispatches are compared with."""
    import transformers
    from transformers.models.jamba.modeling_jamba import JambaSparseMoeBlock

    d, f = ours.router.in_features, ours.experts[0].gate_proj.out_features
    config = transformers.JambaConfig(hidden_size=d, intermediate_size=f, num_experts=len(ours.experts),
                                      num_experts_per_tok=ours.top_k)
    hf = JambaSparseMoeBlock(config).eval()
    with torch.no_grad():
        hf.router.weight.copy_(ours.router.weight)
        for i, expert in enumerate(ours.experts):
            hf.experts.gate_up_proj[i].copy_(torch.cat([expert.gate_proj.weight, expert.up_proj.weight]))
            hf.experts.down_proj[i].copy_(expert.down_proj.weight)
    return hf


# make test runs the suite on two pytest-xdist workers with --dist loadfile: each file goes to one worker
# whole, so its module-scoped fixtures (a sweep, a DDP reference run, a completed run to copy) are built once,
# as in a serial run (not --dist loadgroup with xdist_group marks: under pytest 9.2 and pytest-xdist 3.8 it
# silently stops grouping, pytest-dev/pytest-xdist#1386). The files are handed out in this order, the longest
# first (make test --durations=0, summed per file), so that no worker is left alone with a long file at the
# end; the rest follow in their usual order. Measured on 2 cores (two full runs, summed per file): test_sweep
# 290-330 s, test_ddp_preemption 140-190 s, test_compile ~145 s, test_kernels ~120 s, test_reliability ~80 s,
# test_flops and test_triton_ssd 60-70 s, test_train_e2e (with the default run) and test_evaluation ~55 s, the
# next ones 50 s and below.
LONGEST_FILES_FIRST = (
    "test_sweep.py", "test_ddp_preemption.py", "test_compile.py", "test_kernels.py", "test_reliability.py",
    "test_flops.py", "test_triton_ssd.py", "test_train_e2e.py", "test_evaluation.py", "test_bad_inputs.py",
    "test_activation_memory.py", "test_split_views.py", "test_models.py", "test_triton_conv.py", "test_bench.py",
    "test_config.py", "test_fused_loss.py", "test_hardening.py", "test_report.py", "test_dashboard_browser.py",
    "test_data.py",
)


def pytest_collection_modifyitems(config, items):
    if "PYTEST_XDIST_WORKER" in os.environ:  # every worker sorts alike, so their collections still agree
        rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order is kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    gc.freeze()
    gc.enable()
