"""The audio a transcription or translation job was given: kept as a file in the job's own directory
(`<jobs dir>/<job id>/upload`), never in the store's JSON row, which holds only the form's fields and
the file's name, type, size and digest.

Owns writing the upload before the job's row exists (so a queued job always has its audio), building
the multipart body the synchronous route takes again from the row and the file when the job runs, and
removing the directory once the job has finished or was cancelled (the store's retention sweep removes
what a crash left). It must not check the form (submit does) nor run anything (the runner does).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..transcription import Form, Upload, encode_form

FILE_NAME = "upload"
ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")


class UploadMissing(Exception):
    """The job's audio file is gone (removed by hand or by the retention sweep)."""


def describe(upload: Upload) -> dict[str, Any]:
    """What the row keeps of the file: enough to rebuild the part and to tell two uploads apart."""
    return {"filename": upload.filename, "content_type": upload.content_type, "bytes": len(upload.data),
            "sha256": hashlib.sha256(upload.data).hexdigest()}  # fmt: skip


def directory(jobs_dir: Path, job_id: str) -> Path:
    return jobs_dir / job_id


def save(jobs_dir: Path, job_id: str, data: bytes) -> None:
    """Write the upload atomically (a partial file is never taken for the audio)."""
    where = directory(jobs_dir, job_id)
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / (FILE_NAME + ".partial")
    tmp.write_bytes(data)
    tmp.replace(where / FILE_NAME)


def form_body(jobs_dir: Path, job_id: str, body: str) -> tuple[bytes, bytes]:
    """(multipart body, Content-Type) of the job's request, from its row's JSON body and its file."""
    row = json.loads(body)
    try:
        data = (directory(jobs_dir, job_id) / FILE_NAME).read_bytes()
    except FileNotFoundError:
        raise UploadMissing(f"the audio of job {job_id} is no longer on disk") from None
    meta = row["file"]
    form = Form({k: list(v) for k, v in row["fields"].items()},
                {"file": Upload(meta["filename"], meta["content_type"], data)})  # fmt: skip
    return encode_form(form)


def remove(jobs_dir: Path, job_id: str) -> None:
    shutil.rmtree(directory(jobs_dir, job_id), ignore_errors=True)
