"""Production monitoring: drift detection with multiple-testing correction and its validation
harness, a label-joined performance monitor, Prometheus instrumentation and JSON logs."""
