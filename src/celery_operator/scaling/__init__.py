"""The built-in queue-length scaler: its decision (pure), broker probes, the polling loop."""
