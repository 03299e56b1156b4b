"""A loopback stand-in for the Hugging Face hub: the endpoints huggingface_hub 0.36's
hf_hub_download calls (HEAD and GET /{repo}/resolve/{revision}/{filename}), answered from
memory on 127.0.0.1 only, with the headers it reads (X-Repo-Commit, ETag, Content-Length)
and the X-Error-Code values it turns into its errors (RepoNotFound, RevisionNotFound,
EntryNotFound, GatedRepo).  Started and stopped by a test fixture."""
import hashlib
import http.server
import threading
import urllib.parse


class Repo:
  def __init__(self, commits: dict, refs: dict, gated: bool = False):
    self.commits = commits  # sha -> {filename: bytes}
    self.refs = refs        # branch -> sha
    self.gated = gated


class FakeHub:
  def __init__(self, repos: dict, token: str):
    self.repos, self.token, self.requests = repos, token, []
    hub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      timeout = 30  # a stuck client cannot hold a server thread forever

      def log_message(self, *args):
        pass

      def do_HEAD(self):
        self._answer(body=False)

      def do_GET(self):
        self._answer(body=True)

      def _send(self, status, headers, data=b"", body=False):
        self.send_response(status)
        for k, v in headers.items():
          self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
          self.wfile.write(data)

      def _answer(self, body):
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        hub.requests.append((self.command, path))
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
          return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"not found", body)
        repo = hub.repos.get("/".join(parts[:2]))
        revision, filename = parts[3], "/".join(parts[4:])
        if repo is None:
          return self._send(401, {"X-Error-Code": "RepoNotFound"}, b"no repo", body)
        if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
          return self._send(401, {"X-Error-Code": "GatedRepo"}, b"gated", body)
        sha = repo.refs.get(revision, revision)
        if sha not in repo.commits:
          return self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"no revision", body)
        data = repo.commits[sha].get(filename)
        if data is None:
          return self._send(404, {"X-Error-Code": "EntryNotFound"}, b"no file", body)
        self._send(200, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                   data, body)

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.server.daemon_threads = True
    self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.server.shutdown()
    self.server.server_close()
    self.thread.join(timeout=10)
