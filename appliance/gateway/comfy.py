"""Running one rendered workflow on ComfyUI and fetching its images (contracts.md §3.2, §3.3).

Order: open `/ws?clientId=<id>` first (so no message is missed), `POST /prompt` with that client id,
follow the prompt over the WebSocket until `executing` with `node: null` (or `execution_success`),
falling back to polling `/history/<id>` whenever the socket is quiet or gone, then read the outputs
from `/history/<id>` and fetch each image from `/view`. A 400 from `/prompt` becomes a 400 naming the
node and input; an `execution_error` names the node that failed. If the caller is cancelled (client
gone) or the prompt times out, the prompt is deleted from the queue (`POST /queue {"delete"}`) and
interrupted if running (`POST /interrupt {"prompt_id"}`, which ComfyUI acts on between two sampling
steps), and `run` returns only once `/queue` no longer lists it, so the caller's lease is given back
when ComfyUI has stopped working on it (within `CANCEL_DEADLINE_S`; a second cancellation of the
caller stops the wait, not the cancellation).
It must not choose workflows or parameters (gateway.workflows does) nor hold a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

import aiohttp

from .errors import EngineUnreachable, InvalidRequest, UpstreamFailed

log = logging.getLogger("appliance.gateway")

JOB_TIMEOUT_S = 600.0  # one prompt, queued and executed
QUIET_POLL_S = 2.0  # check /history when the socket says nothing for this long
CANCEL_DEADLINE_S = 60.0  # how long a cancelled prompt may take to leave ComfyUI's queue
CANCEL_POLL_S = 0.05  # /queue polls while a cancelled prompt is still listed (no event says it left)
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


class ComfyFailed(UpstreamFailed):
    code = "image_generation_failed"


def _node_error_message(data: dict[str, Any]) -> InvalidRequest:
    err = data.get("error")
    node_errors = data.get("node_errors") or {}
    for node_id, entry in node_errors.items():
        for e in entry.get("errors", []) if isinstance(entry, dict) else []:
            extra = e.get("extra_info") or {}
            input_name = extra.get("input_name") or "?"
            detail = e.get("details") or ""
            return InvalidRequest(
                f"ComfyUI rejected the workflow: node {node_id} ({entry.get('class_type', '?')}) input "
                f"{input_name!r}: {e.get('message', 'invalid')}" + (f" ({detail})" if detail else ""),
                param=f"{node_id}.{input_name}", code="workflow_invalid")
    if isinstance(err, dict):
        detail = err.get("details") or ""
        return InvalidRequest(f"ComfyUI rejected the workflow: {err.get('message', err.get('type'))}"
                              + (f" ({detail})" if detail and detail != err.get("message") else ""),
                              code="workflow_invalid")
    return InvalidRequest(f"ComfyUI rejected the workflow: {err or data}", code="workflow_invalid")


def _execution_error(data: dict[str, Any]) -> ComfyFailed:
    return ComfyFailed(f"ComfyUI failed in node {data.get('node_id')} ({data.get('node_type')}): "
                       f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}".rstrip(": "))


class ComfyClient:
    """Runs prompts on one ComfyUI; `session` is the engine's pooled aiohttp client."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, background: set[asyncio.Task[None]]) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self._background = background  # owned by the caller: cancellations outlive this client

    async def run(self, graph: dict[str, Any], timeout_s: float = JOB_TIMEOUT_S) -> list[bytes]:
        client_id = uuid.uuid4().hex
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            ws = await self.session.ws_connect(f"{self.base}/ws?clientId={client_id}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("ComfyUI WebSocket unavailable (%r); following the prompt by /history", exc)
        prompt_id = ""
        try:
            prompt_id = await self._submit(graph, client_id)
            entry = await asyncio.wait_for(self._follow(ws, prompt_id), timeout_s)
            return await self._images(entry)
        except TimeoutError:
            await self._cancel_and_wait(prompt_id)
            raise ComfyFailed(f"ComfyUI did not finish the prompt within {timeout_s:.0f} s") from None
        except asyncio.CancelledError:
            if prompt_id:
                await self._cancel_and_wait(prompt_id)
            raise
        except aiohttp.ClientConnectorError as exc:
            log.warning("ComfyUI: cannot connect: %r", exc)  # the transport's text is for the log only
            if prompt_id:
                raise ComfyFailed("ComfyUI went away during the prompt") from exc
            raise EngineUnreachable("ComfyUI refused the connection") from exc
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("ComfyUI: transport failure: %r", exc)
            raise ComfyFailed("ComfyUI failed during the request: the connection broke") from exc
        finally:
            if ws is not None:
                await asyncio.shield(ws.close())

    async def _submit(self, graph: dict[str, Any], client_id: str) -> str:
        body = {"prompt": graph, "client_id": client_id}
        async with self.session.post(f"{self.base}/prompt", json=body, timeout=REQUEST_TIMEOUT) as resp:
            raw = await resp.read()
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"error": raw[:200].decode(errors="replace")}
            if resp.status == 400:
                raise _node_error_message(data if isinstance(data, dict) else {"error": data})
            if resp.status != 200 or not isinstance(data, dict) or "prompt_id" not in data:
                raise ComfyFailed(f"ComfyUI POST /prompt answered {resp.status}: {raw[:200]!r}")
            return str(data["prompt_id"])

    async def _follow(self, ws: aiohttp.ClientWebSocketResponse | None, prompt_id: str) -> dict[str, Any]:
        """The prompt's /history entry once it has finished (raising if it failed)."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + QUIET_POLL_S
        while True:
            if ws is not None and not ws.closed:
                try:
                    msg = await ws.receive(timeout=max(0.0, next_poll - loop.time()))
                except TimeoutError:
                    msg = None
                if msg is not None and msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    # ComfyUI stores the history entry just before the final `executing: null`.
                    done = msg.type == aiohttp.WSMsgType.TEXT and self._finished(json.loads(msg.data), prompt_id)
                    if not done and loop.time() < next_poll:
                        continue
                elif msg is not None:  # closed or errored: poll from now on
                    ws = None
            else:
                await asyncio.sleep(0.25)
            entry = await self._history(prompt_id)
            next_poll = loop.time() + QUIET_POLL_S
            if entry is not None:
                return entry

    @staticmethod
    def _finished(message: Any, prompt_id: str) -> bool:
        if not isinstance(message, dict):
            return False
        kind, data = message.get("type"), message.get("data")
        if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
            return False
        if kind == "execution_error":
            raise _execution_error(data)
        if kind == "execution_interrupted":
            raise ComfyFailed(f"ComfyUI interrupted the prompt in node {data.get('node_id')}")
        return kind == "execution_success" or (kind == "executing" and data.get("node") is None)

    async def _history(self, prompt_id: str) -> dict[str, Any] | None:
        async with self.session.get(f"{self.base}/history/{prompt_id}", timeout=REQUEST_TIMEOUT) as resp:
            if resp.status != 200:
                raise ComfyFailed(f"ComfyUI GET /history answered {resp.status}")
            data = await resp.json(content_type=None)
        entry = data.get(prompt_id) if isinstance(data, dict) else None  # {} until it has finished
        if not isinstance(entry, dict):
            return None
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            for event, info in status.get("messages", []):
                if event == "execution_error" and isinstance(info, dict):
                    raise _execution_error(info)
            raise ComfyFailed("ComfyUI reported an error for the prompt")
        if not status.get("completed", True) and not entry.get("outputs"):
            return None
        return entry

    async def _images(self, entry: dict[str, Any]) -> list[bytes]:
        refs: list[dict[str, Any]] = []
        outputs = entry.get("outputs") or {}
        for node_id in sorted(outputs, key=lambda k: (len(k), k)):
            for image in outputs[node_id].get("images", []):
                if image.get("type", "output") == "output":
                    refs.append(image)
        if not refs:
            raise ComfyFailed("ComfyUI finished the prompt but saved no image (does the workflow end in SaveImage?)")
        return [await self._view(ref) for ref in refs]

    async def _view(self, ref: dict[str, Any]) -> bytes:
        params = {"filename": str(ref.get("filename", "")), "subfolder": str(ref.get("subfolder", "")),
                  "type": str(ref.get("type", "output"))}
        async with self.session.get(f"{self.base}/view", params=params, timeout=REQUEST_TIMEOUT) as resp:
            if resp.status != 200:
                raise ComfyFailed(f"ComfyUI GET /view {params['filename']} answered {resp.status}")
            return await resp.read()

    async def _cancel_and_wait(self, prompt_id: str) -> None:
        """Cancel the prompt and wait until ComfyUI no longer runs or queues it. The cancellation
        runs as its own task (kept in `background`): a second cancellation of the caller ends the
        wait, never the cancellation."""
        task = asyncio.ensure_future(self._cancel(prompt_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    async def _cancel(self, prompt_id: str) -> None:
        started = time.monotonic()
        stopped = False
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
            async with asyncio.timeout(CANCEL_DEADLINE_S):
                async with self.session.post(f"{self.base}/queue", json={"delete": [prompt_id]},
                                             timeout=REQUEST_TIMEOUT) as resp:
                    await resp.read()
                async with self.session.post(f"{self.base}/interrupt", json={"prompt_id": prompt_id},
                                             timeout=REQUEST_TIMEOUT) as resp:
                    await resp.read()
                # Polling /queue: ComfyUI's messages for the prompt go to the client that left.
                while not (stopped := not await self._listed(prompt_id)):  # noqa: ASYNC110
                    await asyncio.sleep(CANCEL_POLL_S)
        took = time.monotonic() - started
        if stopped:
            log.info("ComfyUI prompt %s cancelled (%.2f s)", prompt_id, took)
        else:
            log.warning("ComfyUI prompt %s: cancelled, but not confirmed gone from its queue after %.1f s",
                        prompt_id, took)

    async def _listed(self, prompt_id: str) -> bool:
        """Whether `GET /queue` still shows the prompt running or pending (item[1] is its id)."""
        async with self.session.get(f"{self.base}/queue", timeout=REQUEST_TIMEOUT) as resp:
            data = await resp.json(content_type=None)
        if not isinstance(data, dict):
            return False
        items = [*(data.get("queue_running") or []), *(data.get("queue_pending") or [])]
        return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items)
