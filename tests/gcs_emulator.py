"""A local Google Cloud Storage for tests and benchmarks: no account, no network beyond 127.0.0.1.

`GcsEmulator` starts the JSON-API emulator from the `gcp-storage-emulator` package (in memory) as a
subprocess on a free 127.0.0.1 port, waits until it answers, creates the bucket and hands out the
environment variables that make the project's `gs://` clients talk to it:

- gcsfs and google-cloud-storage read `STORAGE_EMULATOR_HOST`;
- Apache Beam's `FileSystems` (gcsio) read it too, and get their credentials from a dummy
  application-default-credentials file holding a token that never expires, so Beam's credential
  lookup (about 25 s of retries in every process otherwise) returns at once and never refreshes;
- TensorFlow's own GCS client (tf.io.gfile, tf.data) ignores `STORAGE_EMULATOR_HOST`: its
  endpoints, https://www.googleapis.com and https://storage.googleapis.com, are compiled in and no
  GCS_* variable overrides them. With `tensorflow=True` a small TLS proxy (below: the standard
  library, and `cryptography` for its certificate) is started too: libcurl inside TensorFlow reaches it through `https_proxy`, trusts its throw-away CA
  through `CURL_CA_BUNDLE`, and the proxy hands every request for those two hosts, with a plain
  Content-Length body, to the emulator. It refuses every other host, so nothing leaves the machine.

    from gcs_emulator import GcsEmulator

    with GcsEmulator(bucket="test-bucket", tensorflow=True) as gcs:
        with gcs.environ():                       # this process: os.environ updated, then restored
            tf.io.gfile.GFile(gcs.url("a/b.txt"), "w").write("hi")
        subprocess.run(cmd, env={**os.environ, **gcs.env})   # or a child process

Set the variables before gcsfs is first imported: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT at
import time, and with its default each bucket's first access waits 60 s against the emulator.
Every server binds to 127.0.0.1 and lives in its own process group, killed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# The hosts TensorFlow's GCS client talks to (tsl/platform/cloud/gcs_file_system.cc); the proxy
# serves these and nothing else.
GOOGLE_STORAGE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
DEFAULT_BUCKET = "test-bucket"
DEFAULT_PROJECT = "test-project"
# Loopback must never go through the TensorFlow proxy: grpc (Beam's portable runners), requests
# (google-cloud-storage) and libcurl all honour these.
_NO_PROXY = "127.0.0.1,localhost,::1"
_START_TIMEOUT_S = 30.0


class GcsEmulatorError(RuntimeError):
    """The emulator or the proxy did not start, or a request to set it up failed."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _direct_opener() -> urllib.request.OpenerDirector:
    # Talks to the emulator itself, whatever proxy variables the caller's environment holds.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _stop_process_group(proc: subprocess.Popen | None, timeout_s: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, timeout_s)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent(parent_pid: int) -> None:
    # Runs first thing in a server process started by GcsEmulator: if the process that started it
    # dies without stop() (killed test run), Linux sends this one SIGTERM rather than leaving an
    # orphan server behind. Done here rather than in a preexec_fn, which is unsafe in a parent with
    # threads (TensorFlow, gcsfs). Linux ties this to the *thread* that started the server, so start
    # GcsEmulator from a thread that outlives it (the main thread, a pytest fixture). Elsewhere than
    # Linux a no-op.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent was gone before prctl took effect
        sys.exit(1)


def write_dummy_credentials(path: Path) -> Path:
    """Write an application-default-credentials file whose access token never expires.

    google.auth.default() (used by Beam's gcsio and gcsfs) loads it without any network call, and
    since the token is valid until 2999 nothing ever refreshes it; were it refreshed, `token_uri`
    points at the closed port 9 of 127.0.0.1, never at Google.
    """
    info = {
        "type": "authorized_user",
        "client_id": "emulator",
        "client_secret": "emulator",
        "refresh_token": "emulator",
        "token": "emulator-token",
        "expiry": "2999-01-01T00:00:00Z",
        "token_uri": f"http://{HOST}:9/token",
    }
    path.write_text(json.dumps(info))
    return path


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """Make a throw-away CA and a server certificate for the Google storage hosts.

    Returns (ca_certificate, server_certificate_chain, server_key) as PEM files in `directory`.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "speech-enhance test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_STORAGE_HOSTS[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_STORAGE_HOSTS]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


# --- The proxy TensorFlow goes through (runs in its own process: `python gcs_emulator.py proxy`) ---

# Headers that belong to one hop; the proxy reframes every body with its own Content-Length.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Expect", "Content-Length",
    )
)
_METHODS_WITH_BODY = frozenset(("POST", "PUT", "PATCH"))


class _ProxyServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: tuple[str, int], tls_context: ssl.SSLContext):
        super().__init__((HOST, 0), _ProxyHandler)
        self.target = target
        self.tls_context = tls_context


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """An HTTP(S) forward proxy that sends requests for the Google storage hosts to the emulator.

    CONNECT to port 443 of those hosts is answered, the tunnel is terminated with the test CA's
    certificate and each request inside it is forwarded; so are plain http:// requests for them.
    Anything else gets 403: the proxy never opens a connection anywhere but the emulator.
    """

    protocol_version = "HTTP/1.1"
    server: _ProxyServer
    tunnel_host: str | None = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write("proxy: %s\n" % (format % args))

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        if host not in GOOGLE_STORAGE_HOSTS or port != "443":
            self.send_error(403, f"this test proxy serves only {GOOGLE_STORAGE_HOSTS} on port 443")
            self.close_connection = True
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        try:
            tls = self.server.tls_context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.log_message("TLS handshake with the client failed: %s", e)
            self.close_connection = True
            return
        self.connection = self.request = tls
        self.rfile = tls.makefile("rb")
        self.wfile = tls.makefile("wb")
        self.tunnel_host = host
        self.close_connection = False

    def handle_expect_100(self) -> bool:
        # The base class leaves "100 Continue" in the buffered TLS writer; unflushed, libcurl waits
        # a full second before it sends the body anyway.
        answered = super().handle_expect_100()
        self.wfile.flush()
        return answered

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        return b"" if self.command in _METHODS_WITH_BODY else None

    def _forward(self) -> None:
        if self.tunnel_host is None:
            url = urlsplit(self.path)
            if url.scheme != "http" or url.hostname not in GOOGLE_STORAGE_HOSTS:
                self.send_error(403, f"this test proxy serves only {GOOGLE_STORAGE_HOSTS}")
                self.close_connection = True
                return
            host, path = url.hostname, url.path + (f"?{url.query}" if url.query else "")
        else:
            host, path = self.tunnel_host, self.path
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = host
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.server.target, timeout=60)
        try:
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except OSError as e:
            self.send_error(502, f"emulator did not answer: {e}")
            return
        finally:
            upstream.close()

        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            lowered = name.lower()
            if lowered in _HOP_BY_HOP or lowered in ("server", "date"):
                continue
            if lowered == "location" and value.startswith(f"http://{host}"):
                # The emulator builds upload URLs from the Host header; real GCS answers https.
                value = "https://" + value[len("http://"):]
            self.send_header(name, value)
        if self.command == "HEAD":
            if response.getheader("Content-Length") is not None:
                self.send_header("Content-Length", response.getheader("Content-Length"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


def _accept_empty_uploads() -> None:
    """gcp-storage-emulator answers an upload with an empty body (an empty file, or the `dir/` object
    that tf.io.gfile.makedirs creates) by dropping the connection: it reads the body as None. Real GCS
    stores an empty object; so does the emulator after this fix, applied in its own process."""
    from gcp_storage_emulator import server

    read = server._read_data

    def read_empty_upload_as_bytes(request_handler, query):
        data = read(request_handler, query)
        is_upload = request_handler.command in ("POST", "PUT") and "/upload/" in request_handler.path
        return b"" if data is None and is_upload else data

    server._read_data = read_empty_upload_as_bytes


def serve_proxy(target: tuple[str, int], cert: Path, key: Path, port_file: Path) -> None:
    """Run the TensorFlow proxy until killed; its port is written to `port_file` once it listens."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _ProxyServer(target, context)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.rename(port_file)  # atomic: the parent never reads a half-written number
    server.serve_forever()


# --- The harness ---


class GcsEmulator:
    """A running emulator (and, on request, the TensorFlow proxy); use as a context manager.

    Args:
        bucket: bucket created at start (more with `create_bucket`).
        tensorflow: also start the TLS proxy that TensorFlow's GCS client needs.
        project: reported as GOOGLE_CLOUD_PROJECT.

    Attributes, valid while started: `endpoint` (http://127.0.0.1:PORT), `env` (the variables to
    set, for this process through `environ()` or for a child process).
    """

    def __init__(
        self, bucket: str = DEFAULT_BUCKET, *, tensorflow: bool = False, project: str = DEFAULT_PROJECT
    ) -> None:
        self.bucket = bucket
        self.tensorflow = tensorflow
        self.project = project
        self.endpoint: str | None = None
        self.env: dict[str, str] = {}
        self._workdir: Path | None = None
        self._emulator: subprocess.Popen | None = None
        self._proxy: subprocess.Popen | None = None
        self._logs: list = []

    def __enter__(self) -> "GcsEmulator":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def url(self, path: str = "", bucket: str | None = None) -> str:
        """gs://BUCKET/PATH for this emulator's bucket (or `bucket`)."""
        return f"gs://{bucket or self.bucket}/{path.lstrip('/')}"

    def start(self) -> None:
        if self._emulator is not None:
            raise GcsEmulatorError("GcsEmulator.start() was called twice; stop() it first.")
        try:
            import gcp_storage_emulator  # noqa: F401 - only to give a useful message
        except ImportError as e:
            raise GcsEmulatorError(
                "The GCS emulator is not installed in this Python environment "
                f"({sys.executable}); install the project's test extra: pip install -e '.[test]'."
            ) from e
        self._workdir = Path(tempfile.mkdtemp(prefix="gcs-emulator-"))
        try:
            self._start_emulator()
            self.env = self._client_env()
            if self.tensorflow:
                self.env.update(self._start_proxy())
        except BaseException:
            self.stop()
            raise
        logger.info("GCS emulator at %s, bucket gs://%s/%s", self.endpoint, self.bucket,
                    f", TensorFlow proxy at {self.env['https_proxy']}" if self.tensorflow else "")

    def _spawn(self, command: Sequence[str], log_name: str) -> subprocess.Popen:
        # Both servers run through this file's main(), which ties their life to this process.
        argv = [sys.executable, str(Path(__file__).resolve()), command[0], "--parent-pid", str(os.getpid()),
                *command[1:]]
        log = open(self._workdir / log_name, "wb")
        self._logs.append(log)
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=self._workdir,  # whatever a server writes lands in the temporary folder
            start_new_session=True,  # its own process group, killed whole in stop()
        )

    def _start_emulator(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        for _attempt in range(3):  # a free port can be taken between probing and binding
            port = _free_port()
            self._emulator = self._spawn(
                ["emulator", "--", "start", "--host", HOST, "--port", str(port),
                 "--default-bucket", self.bucket, "--in-memory"],
                "emulator.log",
            )
            self.endpoint = f"http://{HOST}:{port}"
            if self._wait_until_answers(deadline):
                return
            _stop_process_group(self._emulator)
        raise GcsEmulatorError(
            f"The GCS emulator did not answer at {self.endpoint} within {_START_TIMEOUT_S:.0f} s. "
            f"Its log ends with:\n{_log_tail(self._workdir / 'emulator.log')}"
        )

    def _wait_until_answers(self, deadline: float) -> bool:
        opener = _direct_opener()
        url = f"{self.endpoint}/storage/v1/b/{self.bucket}"
        while time.monotonic() < deadline:
            if self._emulator.poll() is not None:
                return False
            try:
                with opener.open(url, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def _client_env(self) -> dict[str, str]:
        credentials = write_dummy_credentials(self._workdir / "application_default_credentials.json")
        return {
            # gcsfs, google-cloud-storage and Beam's gcsio
            "STORAGE_EMULATOR_HOST": self.endpoint,
            # gcsfs: without it each bucket's first access waits 60 s (read at import time)
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # google.auth, Beam and TensorFlow: no probe of the GCE metadata server
            "NO_GCE_CHECK": "true",
            # Beam, gcsfs: credentials found at once and never refreshed
            "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
            "GOOGLE_CLOUD_PROJECT": self.project,
            "NO_PROXY": _NO_PROXY,
            "no_proxy": _NO_PROXY,
        }

    def _start_proxy(self) -> dict[str, str]:
        ca, cert, key = write_tls_files(self._workdir)
        port_file = self._workdir / "proxy.port"
        target_port = urlsplit(self.endpoint).port
        self._proxy = self._spawn(
            ["proxy", "--target-port", str(target_port), "--cert", str(cert), "--key", str(key),
             "--port-file", str(port_file)],
            "proxy.log",
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not port_file.exists():
            if self._proxy.poll() is not None or time.monotonic() > deadline:
                raise GcsEmulatorError(
                    "The TensorFlow GCS proxy did not start. Its log ends with:\n"
                    f"{_log_tail(self._workdir / 'proxy.log')}"
                )
            time.sleep(0.02)
        proxy = f"http://{HOST}:{port_file.read_text().strip()}"
        return {
            # libcurl in TensorFlow: https for the API, http in case an upload URL comes back plain
            "https_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "http_proxy": proxy,
            "CURL_CA_BUNDLE": str(ca),
            # TensorFlow's auth provider takes this token before looking for any credentials
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",
        }

    def create_bucket(self, name: str) -> str:
        """Create another bucket; returns gs://NAME/."""
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _direct_opener().open(request, timeout=10):
                pass
        except urllib.error.HTTPError as e:
            raise GcsEmulatorError(f"Could not create bucket {name!r}: HTTP {e.code} {e.read()!r}") from e
        return f"gs://{name}/"

    def log_tail(self, server: str = "emulator", chars: int = 4000) -> str:
        """The end of the log of `server` ("emulator" or "proxy"), for a failing test's message."""
        if self._workdir is None:
            return "(stopped: the logs went with the temporary folder)"
        return _log_tail(self._workdir / f"{server}.log", chars)

    def wipe(self, keep_buckets: bool = True) -> None:
        """Delete every object (and, with keep_buckets=False, every bucket)."""
        query = "?keep-buckets=true" if keep_buckets else ""
        with _direct_opener().open(f"{self.endpoint}/wipe{query}", timeout=10):
            pass

    @contextlib.contextmanager
    def environ(self) -> Iterator[Mapping[str, str]]:
        """Set `env` in os.environ for the block, then put back what was there."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self.env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        _stop_process_group(self._proxy)
        _stop_process_group(self._emulator)
        self._proxy = self._emulator = None
        for log in self._logs:
            log.close()
        self._logs = []
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.env = {}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    emulator = commands.add_parser("emulator", help="run gcp-storage-emulator (GcsEmulator starts it)")
    emulator.add_argument("--parent-pid", type=int, required=True, help="exit when this process dies")
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER, help="arguments after --")
    proxy = commands.add_parser("proxy", help="run the TensorFlow proxy (GcsEmulator starts it)")
    proxy.add_argument("--parent-pid", type=int, required=True, help="exit when this process dies")
    proxy.add_argument("--target-port", type=int, required=True, help="the emulator's port on 127.0.0.1")
    proxy.add_argument("--cert", type=Path, required=True, help="server certificate chain (PEM)")
    proxy.add_argument("--key", type=Path, required=True, help="server key (PEM)")
    proxy.add_argument("--port-file", type=Path, required=True, help="where to write the listening port")
    serve = commands.add_parser("serve", help="run emulator (and proxy) until Ctrl-C; print the variables")
    serve.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket to create")
    serve.add_argument(
        "--tensorflow", action=argparse.BooleanOptionalAction, default=False,
        help="also start the proxy TensorFlow's GCS client needs",
    )
    args = parser.parse_args(argv)
    if args.command == "emulator":
        import runpy

        _die_with_parent(args.parent_pid)
        _accept_empty_uploads()
        emulator_args = args.emulator_args[1:] if args.emulator_args[:1] == ["--"] else args.emulator_args
        sys.argv = ["gcp-storage-emulator", *emulator_args]
        runpy.run_module("gcp_storage_emulator", run_name="__main__", alter_sys=True)
        return
    if args.command == "proxy":
        _die_with_parent(args.parent_pid)
        serve_proxy((HOST, args.target_port), args.cert, args.key, args.port_file)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so `kill` also stops the children
    with GcsEmulator(args.bucket, tensorflow=args.tensorflow) as gcs:
        for name, value in gcs.env.items():
            print(f"export {name}={value}")
        print(f"# bucket: {gcs.url()}  (Ctrl-C stops the emulator)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
