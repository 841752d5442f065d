"""The appliance's own worker programs: one model per process, one small aiohttp server each.

Every worker speaks the protocol in `services.protocol` (health, load, offload, unload, stats) plus the
OpenAI data routes of its modality: `services.text`, `services.embed`, `services.speech`,
`services.diffusers`. Heavy libraries (torch, transformers, diffusers, sentence-transformers, piper,
coqui-tts) are imported only inside these worker processes, on their model thread, never by the daemon.
"""
