"""A local stand-in for the Hugging Face hub (this machine cannot reach the real one): the few endpoints
huggingface_hub's `create_repo` and `upload_folder` call, served on 127.0.0.1 for HF_ENDPOINT.

  GET  /api/whoami-v2                          the token's user (401 for another token)
  POST /api/validate-yaml                      a README's metadata: 400 unless its front matter is a YAML mapping
  POST /api/repos/create                       {"name", "organization", "visibility" | "private", "type"};
                                               403 in a `refused` namespace
  POST /api/models/{ns}/{name}/preupload/{rev} every file "regular" (sent inside the commit, base64)
  POST /api/models/{ns}/{name}/commit/{rev}    the NDJSON commit: header, then one line per file

Everything else answers 404 and is recorded in `unexpected`, so a test sees a call it did not expect; except
GET /api/agent-harnesses, huggingface_hub's best-effort registry lookup, which may 404.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from tests.services import free_port

USER = "tester"


@dataclass
class HubRepo:
    repo_id: str
    create_payload: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    commits: int = 0

    @property
    def private(self) -> bool:
        payload = self.create_payload
        return payload.get("visibility") == "private" or payload.get("private") is True


class LocalHub:
    """Start with `with LocalHub(token) as hub:`; `hub.url` is the HF_ENDPOINT, `hub.repos` what arrived."""

    def __init__(self, token: str = "hf_test_token", refused: frozenset[str] = frozenset()):
        self.token = token
        self.refused = refused  # namespaces the token may not create repos in (403, as the hub answers)
        self.repos: dict[str, HubRepo] = {}
        self.unexpected: list[str] = []
        self.requests: list[str] = []
        self.validated: list[str] = []  # README contents huggingface_hub asked to validate
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: the test reads `hub.requests`
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("authorization") == f"Bearer {hub.token}":
                    return True
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                hub.requests.append(f"GET {self.path}")
                if self.path.split("?")[0] == "/api/whoami-v2":
                    if self._authorized():
                        self._reply(200, {"type": "user", "name": USER, "orgs": []})
                    return
                if self.path.split("?")[0] != "/api/agent-harnesses":
                    hub.unexpected.append(f"GET {self.path}")
                self._reply(404, {"error": "not served by the local hub"})

            def do_POST(self) -> None:
                hub.requests.append(f"POST {self.path}")
                body = self._body()
                if not self._authorized():
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "validate-yaml"]:
                    content = json.loads(body)["content"]
                    hub.validated.append(content)
                    _, front, rest = content.partition("---\n")
                    try:
                        meta = yaml.safe_load(rest.split("\n---\n", 1)[0]) if front else None
                    except yaml.YAMLError as exc:
                        meta = str(exc)
                    if not isinstance(meta, dict):
                        self._reply(400, {"errors": [{"message": f"no YAML mapping in the front matter: {meta!r}"}]})
                    else:
                        self._reply(200, {"errors": [], "warnings": []})
                    return
                if parts == ["api", "repos", "create"]:
                    payload = json.loads(body)
                    repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
                    if repo_id.split("/")[0] in hub.refused:
                        self._reply(403, {"error": f"You don't have the rights to create a model under {repo_id}"})
                        return
                    if repo_id in hub.repos:
                        self._reply(
                            409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                        )
                        return
                    hub.repos[repo_id] = HubRepo(repo_id, payload)
                    self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                    return
                if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
                    repo = hub.repos.get(f"{parts[2]}/{parts[3]}")
                    if repo is None:
                        self._reply(404, {"error": "Repository not found"})
                    elif parts[4] == "preupload":
                        files = json.loads(body)["files"]
                        self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                     "oid": None} for f in files]})  # fmt: skip
                    else:
                        for line in body.decode().splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                value = item["value"]
                                repo.files[value["path"]] = base64.b64decode(value["content"])
                            elif item["key"] != "header":
                                hub.unexpected.append(f"commit line {item['key']}")
                        repo.commits += 1
                        oid = f"{repo.commits:040x}"
                        self._reply(200, {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                                          "pullRequestUrl": None})  # fmt: skip
                    return
                hub.unexpected.append(f"POST {self.path}")
                self._reply(404, {"error": "not served by the local hub"})

        return Handler
