"""A stand-in for the Hugging Face hub's file routes, run as its own process for the pull tests.

It serves what huggingface_hub's download path uses, as read from huggingface_hub 2.4 (file_download.py,
hf_api.py, utils/_http.py):

- HEAD/GET `/{repo}/resolve/{revision}/{path}`: small files answer 200 with `ETag` = the git blob SHA-1,
  `X-Repo-Commit` and the bytes (Range honoured); LFS files answer 302 to a CDN on another port (another
  origin, so huggingface_hub stops there and reads `X-Linked-Size` and `X-Linked-Etag` = sha256 from the
  redirect itself, as with the real hub's signed CDN URLs);
- GET `/api/models/{repo}[/revision/{revision}]?blobs=true`: the model info with `sha` and `siblings`
  (rfilename, size, blobId, lfs {sha256, size, pointerSize});
- gated repos answer 401 with `X-Error-Code: GatedRepo` unless a Bearer token is sent;
- the CDN port serves `/blobs/{sha256}` with Range (206 + Content-Range).

Faults, from the JSON config: `drop_after` {path: n} closes the connection after n bytes on the first
GET of that file; `corrupt` [paths] serves other bytes of the same size under the real hash.
`GET /_requests` on the hub port returns every request seen (method, path, Range, port).

Usage: python hf_standin.py --config CONFIG.json --port P --cdn-port Q
CONFIG: {"repos": {"org/name": {"commit": "<40 hex>", "gated": false,
          "files": {"path/in/repo": {"source": "/abs/file", "lfs": true}}}},
         "drop_after": {"path/in/repo": 1000}, "corrupt": ["path/in/repo"]}
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class HostedFile:
    repo: str
    path: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data, usedforsecurity=False).hexdigest()


class Hub:
    def __init__(self, config: dict[str, Any], cdn_port: int) -> None:
        self.repos: dict[str, dict[str, Any]] = config["repos"]
        self.files: dict[tuple[str, str], HostedFile] = {}
        for repo, spec in self.repos.items():
            for path, meta in spec["files"].items():
                data = Path(meta["source"]).read_bytes()
                self.files[(repo, path)] = HostedFile(repo, path, data, bool(meta.get("lfs", False)))
        self.blobs = {f.sha256: f for f in self.files.values()}
        self.drop_after: dict[str, int] = dict(config.get("drop_after", {}))
        self.corrupt: set[str] = set(config.get("corrupt", []))
        self.cdn = f"http://127.0.0.1:{cdn_port}"
        self.requests: list[dict[str, Any]] = []

    def log(self, request: web.Request) -> None:
        self.requests.append({"method": request.method, "path": request.path, "range": request.headers.get("Range"),
                              "port": request.url.port, "auth": "Authorization" in request.headers})  # fmt: skip

    def check_access(self, repo: str, request: web.Request) -> None:
        if repo not in self.repos:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found")
        if self.repos[repo].get("gated") and not request.headers.get("Authorization", "").startswith("Bearer "):
            raise web.HTTPUnauthorized(headers={"X-Error-Code": "GatedRepo"}, text="Access to this repo is gated")

    def payload(self, hosted: HostedFile) -> bytes:
        if hosted.path in self.corrupt:
            return bytes(b ^ 0xFF for b in hosted.data)
        return hosted.data

    async def send_bytes(self, request: web.Request, hosted: HostedFile, headers: dict[str, str]) -> web.StreamResponse:
        data = self.payload(hosted)
        start, status = 0, 200
        match = re.match(r"bytes=(\d+)-$", request.headers.get("Range", ""))
        if match:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers.update({"Content-Length": str(len(body)), "Accept-Ranges": "bytes"})
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        cut = self.drop_after.pop(hosted.path, None)
        if cut is not None and cut < len(body):
            await response.write(body[:cut])
            await response.drain()
            assert request.transport is not None
            request.transport.close()  # mid-body: the client sees a truncated transfer
            return response
        await response.write(body)
        await response.write_eof()
        return response

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        self.log(request)
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.check_access(repo, request)
        hosted = self.files.get((repo, request.match_info["path"]))
        commit = self.repos[repo]["commit"]
        if request.match_info["revision"] not in ("main", commit):
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"}, text="Revision not found")
        if hosted is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit},
                                   text="Entry not found")  # fmt: skip
        headers = {"X-Repo-Commit": commit}
        if hosted.lfs:
            headers.update({
                "Location": f"{self.cdn}/blobs/{hosted.sha256}",
                "X-Linked-Size": str(len(hosted.data)),
                "X-Linked-Etag": f'"{hosted.sha256}"',
                "ETag": f'"{hosted.git_sha1}"',
            })  # fmt: skip
            raise web.HTTPFound(headers["Location"], headers=headers)
        headers["ETag"] = f'"{hosted.git_sha1}"'
        return await self.send_bytes(request, hosted, headers)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.log(request)
        hosted = self.blobs.get(request.match_info["sha"])
        if hosted is None:
            raise web.HTTPNotFound()
        return await self.send_bytes(request, hosted, {"ETag": f'"{hosted.sha256}"'})

    async def model_info(self, request: web.Request) -> web.Response:
        self.log(request)
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.check_access(repo, request)
        spec = self.repos[repo]
        siblings = []
        for (owner, path), hosted in sorted(self.files.items()):
            if owner != repo:
                continue
            entry: dict[str, Any] = {"rfilename": path}
            if request.query.get("blobs"):
                entry.update({"size": 134 if hosted.lfs else len(hosted.data), "blobId": hosted.git_sha1})
                if hosted.lfs:
                    entry["lfs"] = {"sha256": hosted.sha256, "size": len(hosted.data), "pointerSize": 134}
            siblings.append(entry)
        return web.json_response({"id": repo, "modelId": repo, "sha": spec["commit"], "private": False,
                                  "gated": bool(spec.get("gated")), "siblings": siblings})  # fmt: skip

    async def seen(self, _: web.Request) -> web.Response:
        return web.json_response(self.requests)


async def serve(config: dict[str, Any], port: int, cdn_port: int) -> None:
    hub = Hub(config, cdn_port)
    app = web.Application()
    app.router.add_route("*", "/{org}/{name}/resolve/{revision}/{path:.+}", hub.resolve)
    app.router.add_get("/api/models/{org}/{name}", hub.model_info)
    app.router.add_get("/api/models/{org}/{name}/revision/{revision}", hub.model_info)
    app.router.add_get("/_requests", hub.seen)
    cdn = web.Application()
    cdn.router.add_route("*", "/blobs/{sha}", hub.blob)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(cdn, access_log=None)]
    for runner, p in zip(runners, (port, cdn_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", p).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cdn-port", type=int, required=True)
    ns = parser.parse_args()
    asyncio.run(serve(json.loads(ns.config.read_text()), ns.port, ns.cdn_port))


if __name__ == "__main__":
    main()
