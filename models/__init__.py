"""Detection: features, rules, online river detectors, offline retraining, registry, evaluation."""
