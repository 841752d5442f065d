"""Discrete-event simulator of the residency scheduler and the peers' policies.

Owns: virtual-time runs of the very same pure core the daemon uses (and of the
baselines) over the benchmark's workloads, with one calibration table for service
times and swap costs.

Must not: import anything impure; no clock reads, no I/O besides loading a calibration file.
"""
