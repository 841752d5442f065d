"""Speech worker: one /v1/audio/speech over three engines.

XTTS v2 through coqui-tts on the GPU (its own virtual environment; the CPML licence must be accepted
explicitly), Piper (a neural voice faster than real time on a CPU; the default on a box without a GPU)
and espeak-ng, the last-resort fallback. `audio` encodes wav, mp3, opus, flac and pcm; `engines` holds
the engine contract and the model-path grammar; `piper_engine`, `espeak_engine` and `xtts_engine` are the
engines; `backend` picks one (falling back to espeak-ng when the chosen one cannot load); `routes` owns
the OpenAI request and response.
"""
