"""AI Appliance: one daemon that time-slices a single GPU between text, image and speech models."""

__version__ = "0.1.0"
