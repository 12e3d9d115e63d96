"""Hyperparameter tuning: Optuna (TPE, MedianPruner, in-memory / RDB / journal storage,
several workers on one study), Ray Tune with ASHA, and W&B sweep configs run locally."""
