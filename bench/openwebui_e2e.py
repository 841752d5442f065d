"""Open WebUI end to end against a running appliance: the real `open-webui` package, started by the
daemon as its `openwebui` engine, driven through Open WebUI's own HTTP API.

    python bench/openwebui_e2e.py [--open-webui $OWUI_VENV/bin/open-webui] [--keep DIR]

Open WebUI lives in its own virtualenv outside the repository (it pins its own FastAPI, transformers
and torch); docs/openwebui.md says how to install it without a CUDA torch and how long that took. The
daemon serves every modality from real CPU workers: Piper speech, pocketsphinx speech-to-text, the
packaged MiniLM embeddings, and a tiny random-weight Llama and Stable Diffusion built here offline (so
the chat's words and the image are noise: the plumbing is what is checked). The script signs up Open
WebUI's first admin, then lists models, completes a chat, transcribes an uploaded recording, speaks a
reply, generates an image, uploads a document and retrieves from it with the appliance's embeddings
(and chats with it attached), and shows that Open WebUI loaded no Whisper or embedding model of its
own: its audio and retrieval config (its API) name the appliance, its log names no local model load,
no GPU is visible to its process, and neither CTranslate2 (faster-whisper) nor a CUDA library is
mapped into it. Each step's wall time and a last JSON line are printed; it exits non-zero when a step
failed. Not part of ./test.sh (it needs Open WebUI installed and takes minutes). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from daemon_harness import Daemon, free_port, wait_for  # noqa: E402
from stt_audio import SENTENCES, encode, speak, wer  # noqa: E402
from tiny_models import build_tiny_llama, build_tiny_sd1  # noqa: E402

from appliance.gateway.keys import KeyStore  # noqa: E402
from appliance.store import open_store  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DOCUMENT = ("The appliance keeps its spare fuses in the blue drawer under the workbench.\n\n"
            "Visitors sign in at the front desk and wear a green badge.\n\n"
            "The coffee machine is descaled every second Tuesday.\n")  # fmt: skip
QUESTION = "Where are the spare fuses kept?"


def worker(kind: str, model_path: str, *extra: str) -> dict[str, Any]:
    return {"kind": "worker", "worker": kind, "model_path": model_path, "device": "cpu", "port": free_port(),
            "ready_timeout_s": 120.0, "env": OFFLINE, "extra_args": list(extra)}  # fmt: skip


def config(tmp: Path, open_webui: str, ui_port: int) -> dict[str, Any]:
    for sub in ("tiny-llama", "tiny-sd1"):
        (tmp / sub).mkdir(exist_ok=True)
    llama = build_tiny_llama(tmp / "tiny-llama", max_positions=4096)  # Open WebUI's RAG prompt is long
    sd1 = build_tiny_sd1(tmp / "tiny-sd1")
    ui = {"kind": "openwebui", "port": ui_port, "command": [open_webui], "autostart": True, "ready_timeout_s": 600.0,
          "stop_grace_s": 10.0, "env": {"IMAGE_SIZE": "64x64", "CHUNK_SIZE": "120", "CHUNK_OVERLAP": "0"}}  # fmt: skip
    return {
        "server": {"keepalive_interval_s": 0.5},
        "engines": {
            "text": worker("text", str(llama)),
            "image": worker("diffusers", str(sd1), "--cpu-default-size", "64x64", "--steps", "2"),
            "tts": worker("speech", "piper:en_US-joe-medium"),
            "stt": worker("stt", "pocketsphinx:en-us"),
            "embed": worker("embed", "all-MiniLM-L6-v2"),
            "webui": ui,
        },
        "models": {
            "tiny-chat": {"engine": "text", "modality": "text", "vram_gb": 0.1, "max_tokens_cap": 16},
            "tiny-sd": {"engine": "image", "modality": "image", "vram_gb": 0.1},
            "voice": {"engine": "tts", "modality": "speech", "vram_gb": 0.1},
            "ears": {"engine": "stt", "modality": "transcription", "vram_gb": 0.1},
            "minilm": {"engine": "embed", "modality": "embedding", "vram_gb": 0.1},
        },
    }


class Run:
    """Each step timed; a failed step is recorded with its error and the run goes on."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            detail = fn()
        except Exception as exc:  # reported, not raised: the other steps still run
            self.steps[name] = {"ok": False, "s": round(time.perf_counter() - started, 2),
                                "error": f"{type(exc).__name__}: {exc}"[:500]}  # fmt: skip
            print(f"FAIL {name}: {self.steps[name]['error']}", file=sys.stderr)
            traceback.print_exc(limit=2, file=sys.stderr)
            return None
        self.steps[name] = {"ok": True, "s": round(time.perf_counter() - started, 2), "detail": detail}
        print(f"ok   {name} ({self.steps[name]['s']} s): {json.dumps(detail)[:300]}", file=sys.stderr)
        return detail


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    venv = Path(os.environ.get("OWUI_VENV") or Path.home() / "owui-venv")
    parser.add_argument("--open-webui", default=str(venv / "bin" / "open-webui"),
                        help="the open-webui executable (default: $OWUI_VENV/bin/open-webui, OWUI_VENV ~/owui-venv)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run's files (logs, state) in this folder")
    args = parser.parse_args()
    if not Path(args.open_webui).is_file():
        print(f"{args.open_webui} not found: install open-webui first (docs/openwebui.md)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="owui-e2e-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    run = Run()
    ui_port = free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    daemon: Daemon | None = None
    try:
        doc = run.step("build tiny models", lambda: config(tmp, args.open_webui, ui_port))
        if doc is None:
            return 1
        daemon = Daemon(tmp, doc, env=OFFLINE)
        backing = open_store("", daemon.state)
        admin_key = KeyStore(backing).create("e2e-admin", admin=True)[1]
        backing.close()
        auth = {"Authorization": f"Bearer {admin_key}"}
        appliance = httpx.Client(base_url=daemon.url, headers=auth, timeout=300)
        run.step("daemon start", lambda: daemon.start() and {"url": daemon.url})

        def engine(name: str) -> dict[str, Any]:
            status = appliance.get("/api/status").json()
            found: dict[str, Any] = next(e for e in status["engines"] if e["name"] == name)
            return found

        def webui_ready() -> dict[str, Any]:
            wait_for(lambda: _get_ok(ui + "/health"), 600, "Open WebUI /health")
            found = engine("webui")
            return {"state": found.get("state"), "pid": found.get("pid")}

        run.step("open-webui started by the daemon", webui_ready)
        web = httpx.Client(base_url=ui, timeout=300)

        def signup() -> dict[str, Any]:
            resp = web.post("/api/v1/auths/signup", json={"name": "Admin", "email": "admin@example.com",
                                                          "password": "appliance-e2e-Pw1"})  # fmt: skip
            check(resp.status_code == 200, f"signup: {resp.status_code} {resp.text[:300]}")
            body = resp.json()
            web.headers["Authorization"] = f"Bearer {body['token']}"
            return {"role": body.get("role")}

        run.step("sign up the first admin", signup)

        def models() -> dict[str, Any]:
            resp = web.get("/api/models")
            check(resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}")
            ids = sorted(m["id"] for m in resp.json()["data"])
            check("tiny-chat" in ids, f"the appliance's models are not listed: {ids}")
            default = web.get("/api/config").json().get("default_models")
            check(default == "tiny-chat", f"Open WebUI's default model is {default!r}, not the box's text model")
            return {"models": ids, "default_models": default}

        run.step("list models", models)

        def chat() -> dict[str, Any]:
            resp = web.post("/api/chat/completions", json={"model": "tiny-chat", "stream": False, "max_tokens": 8,
                                                           "messages": [{"role": "user", "content": "Say hi"}]})
            check(resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}")
            body = resp.json()
            text = body["choices"][0]["message"]["content"]
            check(isinstance(text, str) and body["choices"][0]["finish_reason"] in ("stop", "length"), str(body)[:300])
            return {"reply": text[:60], "usage": body.get("usage")}

        run.step("complete a chat", chat)
        said = " ".join(SENTENCES[:2])
        recording = encode(*speak(said), "wav")

        def transcribe() -> dict[str, Any]:
            resp = web.post("/api/v1/audio/transcriptions", files={"file": ("recording.wav", recording, "audio/wav")})
            check(resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}")
            text = resp.json()["text"]
            check(wer(said, text) < 0.3, f"word error rate {wer(said, text):.2f}: {text!r}")
            return {"text": text, "wer": round(wer(said, text), 3)}

        run.step("transcribe an uploaded recording", transcribe)

        def tts() -> dict[str, Any]:
            resp = web.post("/api/v1/audio/speech", json={"input": "Your coffee is ready.", "voice": "alloy",
                                                          "model": "voice"})  # fmt: skip
            check(resp.status_code == 200 and len(resp.content) > 1000, f"{resp.status_code} {resp.text[:200]}")
            return {"bytes": len(resp.content), "content_type": resp.headers.get("content-type")}

        run.step("speak a reply", tts)

        def image() -> dict[str, Any]:
            resp = web.post("/api/v1/images/generations", json={"prompt": "a red cube on a table"})
            check(resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}")
            items = resp.json()
            url = items[0]["url"]
            data = web.get(url).content if url.startswith("/") else b""
            check(data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG at {url}: {data[:16]!r}")
            return {"url": url, "bytes": len(data)}

        run.step("generate an image", image)

        def rag() -> dict[str, Any]:
            resp = web.post("/api/v1/files/", params={"process_in_background": "false"},
                            files={"file": ("facility.txt", DOCUMENT.encode(), "text/plain")})  # fmt: skip
            check(resp.status_code == 200, f"upload: {resp.status_code} {resp.text[:300]}")
            file_id = resp.json()["id"]
            hits = web.post("/api/v1/retrieval/query/doc", json={"collection_name": f"file-{file_id}",
                                                                 "query": QUESTION, "k": 1})  # fmt: skip
            check(hits.status_code == 200, f"query: {hits.status_code} {hits.text[:300]}")
            top = hits.json()["documents"][0][0]
            check("fuses" in top, f"the nearest chunk is not the one about fuses: {top!r}")
            answer = web.post("/api/chat/completions", json={
                "model": "tiny-chat", "stream": False, "max_tokens": 8, "files": [{"type": "file", "id": file_id}],
                "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
            check(answer.status_code == 200, f"chat with the file: {answer.status_code} {answer.text[:300]}")
            plain = web.post("/api/chat/completions", json={
                "model": "tiny-chat", "stream": False, "max_tokens": 8,
                "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
            with_file, without = answer.json()["usage"]["prompt_tokens"], plain.json()["usage"]["prompt_tokens"]
            # the retrieved chunk went into the prompt the appliance's model was given (its words are noise)
            check(with_file > without + 20, f"no retrieved context in the prompt: {with_file} vs {without} tokens")
            return {"file_id": file_id, "top_chunk": top, "prompt_tokens_with_file": with_file,
                    "prompt_tokens_without": without}  # fmt: skip

        run.step("upload a document and answer from it", rag)

        def served_by_the_appliance() -> dict[str, Any]:
            recent = appliance.get("/api/usage", params={"recent": 500}).json()["recent"]
            by_model: dict[str, int] = {}
            for r in recent:
                if r["status"] == 200:
                    by_model[r["model"]] = by_model.get(r["model"], 0) + 1
            for model in ("tiny-chat", "tiny-sd", "voice", "ears", "minilm"):
                check(by_model.get(model, 0) > 0, f"the appliance served no {model} request: {by_model}")
            return {"requests_by_model": by_model}

        run.step("every modality served by the appliance", served_by_the_appliance)

        def no_local_models() -> dict[str, Any]:
            audio = web.get("/api/v1/audio/config").json()
            retrieval = web.get("/api/v1/retrieval/embedding").json()
            check(audio["stt"]["ENGINE"] == "openai" and audio["stt"]["OPENAI_API_BASE_URL"].startswith(daemon.url),
                  f"speech-to-text: {audio['stt']}")
            check(retrieval["RAG_EMBEDDING_ENGINE"] == "openai"
                  and retrieval["openai_config"]["url"].startswith(daemon.url), f"embeddings: {retrieval}")
            pid = int(engine("webui")["pid"])
            pids = [pid, *_children(pid)]
            gpu = appliance.get("/api/status").json().get("gpu") or {}
            holders = {p["pid"] for g in (gpu if isinstance(gpu, list) else [gpu]) for p in g.get("processes", [])}
            check(not holders & set(pids), f"an Open WebUI process holds GPU memory: {holders & set(pids)}")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            check(b"CUDA_VISIBLE_DEVICES=" in environ, "CUDA_VISIBLE_DEVICES is not empty for Open WebUI")
            mapped = "".join(Path(f"/proc/{p}/maps").read_text() for p in pids if Path(f"/proc/{p}/maps").exists())
            check("libctranslate2" not in mapped, "CTranslate2 (faster-whisper) is loaded in Open WebUI")
            check("libcuda.so" not in mapped and "libcudart" not in mapped, "a CUDA library is loaded in Open WebUI")
            log = (daemon.state / "logs").rglob("webui*")
            text = "".join(p.read_text(errors="replace") for p in log if p.is_file())
            for marker in ("WhisperModel", "SentenceTransformer(", "Load pretrained SentenceTransformer"):
                check(marker not in text, f"Open WebUI's log shows a local model load: {marker}")
            return {"stt_engine": audio["stt"]["ENGINE"], "stt_model": audio["stt"].get("MODEL"),
                    "tts_engine": audio["tts"]["ENGINE"], "embedding_engine": retrieval["RAG_EMBEDDING_ENGINE"],
                    "embedding_model": retrieval["RAG_EMBEDDING_MODEL"], "processes": len(pids),
                    "gpu_probe": gpu.get("kind"), "gpu_processes": sorted(holders),
                    "log_chars_checked": len(text)}  # fmt: skip

        run.step("open-webui loaded no model of its own", no_local_models)

        def settings_reapplied() -> dict[str, Any]:
            """A setting changed in Open WebUI (as an admin could, or a database from an earlier start
            holds) is the appliance's again after the appliance restarts it."""
            current = web.get("/api/v1/audio/config").json()
            stale = {**current["stt"], "OPENAI_API_BASE_URL": "http://127.0.0.1:9/v1"}
            resp = web.post("/api/v1/audio/config/update", json={"tts": current["tts"], "stt": stale})
            check(resp.status_code == 200, f"update: {resp.status_code} {resp.text[:300]}")
            check(web.get("/api/v1/audio/config").json()["stt"]["OPENAI_API_BASE_URL"].endswith(":9/v1"),
                  "Open WebUI did not take the changed setting")
            old_pid = engine("webui")["pid"]
            restart = appliance.post("/api/engines/webui/restart")
            check(restart.status_code == 200, f"restart: {restart.status_code} {restart.text[:300]}")
            wait_for(lambda: engine("webui")["pid"] not in (None, old_pid) and _get_ok(ui + "/health"), 600,
                     "Open WebUI restarted")  # fmt: skip
            url = web.get("/api/v1/audio/config").json()["stt"]["OPENAI_API_BASE_URL"]
            check(url.startswith(daemon.url), f"after the restart speech-to-text points at {url}")
            again = web.post("/api/v1/audio/transcriptions", files={"file": ("r.wav", recording, "audio/wav")})
            check(again.status_code == 200 and wer(said, again.json()["text"]) < 0.3, again.text[:300])
            return {"stt_url_after_restart": url, "old_pid": old_pid, "new_pid": engine("webui")["pid"]}

        run.step("settings re-applied on restart", settings_reapplied)
        return 0 if all(s["ok"] for s in run.steps.values()) else 1
    finally:
        if daemon is not None and daemon.proc is not None:
            daemon.proc.terminate()
            try:
                daemon.proc.wait(60)
            except Exception:
                daemon.proc.kill()
        passed = sum(s["ok"] for s in run.steps.values())
        print(json.dumps({"passed": passed, "failed": len(run.steps) - passed,
                          "steps": {k: {"ok": v["ok"], "s": v["s"], **({"error": v["error"]} if not v["ok"] else {})}
                                    for k, v in run.steps.items()}, "files": str(tmp)}))  # fmt: skip
        if args.keep is None and all(s["ok"] for s in run.steps.values()):
            shutil.rmtree(tmp, ignore_errors=True)


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            out += [int(child), *_children(int(child))]
    return out


if __name__ == "__main__":
    os.environ.update(OFFLINE)
    sys.exit(main())
