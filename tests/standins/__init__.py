"""Stand-in servers for the engines the appliance supervises (vLLM, ComfyUI) and helpers to launch them.

Only ``standins.launch`` is meant to be imported; the other modules are loaded as siblings of the
stand-in scripts when those run as ``python tests/standins/<name>_standin.py``.
"""
