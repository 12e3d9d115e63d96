"""Experiment tracking: MLflow (sqlite store, explicit artifact location), TensorBoard
(SummaryWriter, read back with the event reader) and W&B (offline mode, read back with
wandb's own transaction-log reader), behind one small tracker interface, plus sinks that log
mlsuite result records to each."""
