"""Table-1 style report of a sweep (or of run folders), with figures and an interactive page.

    python -m flowhn.report <sweep_dir>                  # from the local job folders
    python -m flowhn.report <run_dir> <run_dir> ...      # single runs (train.py's folders), side by side
    python -m flowhn.report <sweep_dir> --wandb-group G  # from a W&B group (needs W&B online)
    python -m flowhn.report --seqlen <ladder.csv>        # the bench's throughput-vs-length ladder

Writes ``<sweep_dir>/report/`` (``--out`` elsewhere):

* ``index.html``: everything below in one self-contained page that opens from disk (plotly.js
  inlined): the sortable table with the paper's numbers, TPS/MFU/loss curves against step, tokens
  or training time with runs toggled on and off, validation loss and zero-shot average against TPS
  with the Pareto front, and per run its status, differing config keys, GPU and MFU peak, and the
  command that reproduces it;
* ``table.md`` / ``table.csv``: one row per job (model/split, scale, TPS, MFU %, arc_e, arc_c,
  wino, piqa, hella, boolq, Avg in %, val_loss), the paper's TPS/MFU/Avg beside rows it printed;
  jobs that did not complete (failed, stopped, running, missing) listed with their errors;
* ``tps_mfu.png``: TPS bars and MFU line (twin axis) per scale, as in the paper's figure;
* ``perf_curves.png`` / ``loss_curves.png``: TPS and MFU, training and validation loss over steps;
* ``seeds.md`` / ``seeds.csv`` / ``seed_curves.png``, when the jobs were swept over ``seed``: each
  configuration once, its validation loss, TPS, MFU and zero-shot Avg as mean ± spread over its
  seeds, where validation loss stopped falling, which rows' seed ranges do not overlap; loss
  curves one colour per configuration, one line per seed;
* ``seqlen.png`` / ``seqlen.md``: tok/s against sequence length per model, when given a ladder CSV
  (``--seqlen``, or ``seqlen.csv`` / ``seqlen_ladder.csv`` in the sweep folder).

Modules: ``runs`` (reading jobs and metrics), ``table``, ``seeds``, ``figures`` (PNG), ``html``, ``seqlen``,
``wandb_offline`` (offline W&B run files), ``cli``.
"""

from flowhn.report.cli import main, write_report
from flowhn.report.runs import Run, align_steps, local_runs, read_metrics, wandb_runs
from flowhn.report.table import markdown, table

__all__ = ["Run", "align_steps", "local_runs", "main", "markdown", "read_metrics", "table", "wandb_runs",
           "write_report"]
