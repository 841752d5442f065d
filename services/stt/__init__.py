"""The speech-to-text worker: faster-whisper (CTranslate2) as the main engine, pocketsphinx as the light
offline one, served on OpenAI's /v1/audio/transcriptions and /v1/audio/translations."""
