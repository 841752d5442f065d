"""Diffusers worker: text-to-image behind /v1/images/generations.

StableDiffusion3Pipeline for SD3/SD3.5 (defaults are SD3.5 Large Turbo's: 4 steps, guidance 0) and any
other text-to-image pipeline through AutoPipelineForText2Image. `backend` owns the pipeline and its
residency (weights between pinned host RAM and the GPU), `routes` owns the OpenAI request and response
(the worker always answers b64_json; the gateway turns images into URLs when asked).
"""
