"""Engine adapters (control plane): how to launch, probe, activate and release each engine kind."""
