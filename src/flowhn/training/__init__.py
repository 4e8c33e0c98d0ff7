"""Training: the LightningModule and the run driver behind train.py."""
