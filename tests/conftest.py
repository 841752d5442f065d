"""Session fixtures shared by every test directory: the tiny models, built once; a real multilingual
Whisper joined from its packages; the backing services (PostgreSQL, a Kafka-protocol broker, a Milvus
server) started on first use."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_models
from backing_services import kafka_broker, milvus_uri, pg_database  # noqa: F401  (fixtures for every directory)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_tiny_sd1(tmp_path_factory.mktemp("tiny-sd1"))


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def tiny_multilingual_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-multi"), multilingual=True)


@pytest.fixture(scope="session")
def whisper_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.packaged_whisper_base(tmp_path_factory.mktemp("whisper-base"))
