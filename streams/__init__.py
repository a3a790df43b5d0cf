"""The imperative shell: Kafka loops, the Faust app, CLI, sinks and metrics."""
