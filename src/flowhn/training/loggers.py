"""A CSV logger whose ``metrics.csv`` survives a resume.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run resumed in
its own directory would keep only the steps after the restart. This one keeps the file and, at its
first write, drops the old rows from the first step it logs onwards: those steps ran after the
checkpoint the run resumed from and are trained (and logged) again. The file then reads as one
uninterrupted run.
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ResumingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        self._merged = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        pass  # the parent deletes metrics.csv here

    def save(self) -> None:
        if self.metrics and not self._merged:
            self._keep_rows_before(min(int(m["step"]) for m in self.metrics))
        super().save()

    def _keep_rows_before(self, first_step: int) -> None:
        self._merged = True
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if not row.get("step") or int(row["step"]) < first_step]
            header = sorted(reader.fieldnames or [])
        # The parent appends with ``metrics_keys`` as the column order, so it must be the header's.
        self.metrics_keys = header
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments) that continues the ``metrics.csv`` of a resumed run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment
