"""Where raw files come from: ordered mirrors, verified downloads, atomic placement.

Each file is fetched from the first mirror that delivers it intact. A mirror is
a local folder, a ``file://`` URL or an ``http(s)://`` URL; the file's name is
appended to it. Every copy lands in a temporary file next to its destination
and is accepted only when the SHA-256 of its *decompressed* content matches the
config, so mirrors whose gzip headers differ (Debian's package, the upstream
downloads) are all checked by the same fingerprint. Only then is it renamed
into place: a failed or killed download never leaves a file a later stage
would trust.

HTTP downloads time out, retry transient failures (timeouts, dropped
connections, 5xx answers) a bounded number of times with exponential backoff,
and resume a partial download with a Range request; a server that ignores the
Range gets the file from the start again.

On a terminal a tqdm bar shows each copy's progress; logs and CI get the plain
log lines only.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm
from tqdm.utils import CallbackIOWrapper

from reglab.config.data import DataFile
from reglab.core.io import atomic_path
from reglab.data.errors import DownloadError
from reglab.data.idx import decompress, is_gzip_name

log = logging.getLogger(__name__)

MIRRORS_ENV = "REGLAB_DATA_MIRRORS"
_CHUNK = 1 << 16
_USER_AGENT = "reglab-data/1"


def resolve_mirrors(
    mirrors: Sequence[str], extra_mirrors: Sequence[str], environ: Mapping[str, str]
) -> list[str]:
    """The mirrors in the order they are tried: the environment's, the user's, the config's.

    ``environ`` is the process's environment (the entry layer's to read), where
    ``REGLAB_DATA_MIRRORS`` is comma-separated. Duplicates are tried once.
    """
    from_env = [item.strip() for item in environ.get(MIRRORS_ENV, "").split(",")]
    ordered: list[str] = []
    for mirror in [*from_env, *extra_mirrors, *mirrors]:
        if mirror and mirror not in ordered:
            ordered.append(mirror)
    return ordered


def content_sha256(path: Path, gzipped: bool | None = None) -> str:
    """SHA-256 of a file's decompressed content; ValueError if its gzip is broken.

    ``gzipped`` defaults to the ``.gz`` suffix of ``path`` (a temporary file's
    name says nothing, so the caller tells).
    """
    if gzipped is None:
        gzipped = is_gzip_name(path)
    return hashlib.sha256(decompress(path.read_bytes(), gzipped)).hexdigest()


def fetch_files(
    files: Mapping[str, DataFile],
    mirrors: Sequence[str],
    destination: Path,
    *,
    timeout_s: float,
    retries: int,
    backoff_s: float,
) -> dict[str, Path]:
    """Put a verified copy of every file in ``destination``; return their paths by key.

    Files already there and verified are kept. Raises DownloadError, naming each
    mirror and why it failed, when no mirror delivers a file.
    """
    destination.mkdir(parents=True, exist_ok=True)
    fetcher = _Fetcher(list(mirrors), timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    return {
        key: fetcher.fetch(data_file.filename, data_file.sha256, destination)
        for key, data_file in files.items()
    }


class _MirrorFailure(Exception):
    """This mirror cannot deliver this file; ``unreachable`` spares it for later files too."""

    def __init__(self, reason: str, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable


class _Transient(_MirrorFailure):
    """A failure worth retrying on the same mirror (timeout, dropped connection, 5xx)."""


class _Fetcher:
    def __init__(
        self, mirrors: list[str], *, timeout_s: float, retries: int, backoff_s: float
    ) -> None:
        self.mirrors = mirrors
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        # A mirror that could not be reached for one file is not waited on again.
        self.unreachable: dict[str, str] = {}

    def fetch(self, filename: str, sha256: str, destination: Path) -> Path:
        target = destination / filename
        if target.exists():
            problem = _check(target, filename, sha256)
            if problem is None:
                log.info("%s: present and verified; not downloaded again", target)
                return target
            log.warning("%s: present but %s; fetching it again", target, problem)
            target.unlink()
        if not self.mirrors:
            raise DownloadError(
                f"{filename}: no mirror to fetch it from; list one in data.mirrors, "
                f"data.extra_mirrors or {MIRRORS_ENV}"
            )
        failures: list[tuple[str, str]] = []
        for position, mirror in enumerate(self.mirrors, start=1):
            next_step = "trying the next" if position < len(self.mirrors) else "no mirror left"
            if mirror in self.unreachable:
                reason = f"skipped: unreachable for an earlier file ({self.unreachable[mirror]})"
                log.warning("%s: mirror %s %s; %s", filename, mirror, reason, next_step)
                failures.append((mirror, reason))
                continue
            try:
                started = time.monotonic()
                # The copy lands beside the target and is renamed onto it only
                # once verified; any failure removes it.
                with atomic_path(target) as temp:
                    source = self._copy_from(mirror, filename, temp)
                    problem = _check(temp, filename, sha256)
                    if problem is not None:
                        raise _MirrorFailure(problem)
                log.info(
                    "%s: fetched %d bytes from %s in %.1f s; checksum verified",
                    filename,
                    target.stat().st_size,
                    source,
                    time.monotonic() - started,
                )
                return target
            except _MirrorFailure as failure:
                log.warning("%s: mirror %s failed: %s; %s", filename, mirror, failure, next_step)
                failures.append((mirror, failure.reason))
                if failure.unreachable:
                    self.unreachable[mirror] = failure.reason
        listing = "; ".join(f"{mirror} ({reason})" for mirror, reason in failures)
        raise DownloadError(
            f"could not fetch {filename} from any of {len(failures)} mirrors: {listing}. "
            f"Check the network, or add a mirror with {MIRRORS_ENV}=url1,url2 "
            "or data.extra_mirrors"
        )

    def _copy_from(self, mirror: str, filename: str, temp: Path) -> str:
        """Copy ``filename`` from ``mirror`` into ``temp``; return where it came from."""
        scheme = urllib.parse.urlsplit(mirror).scheme.lower()
        if scheme in ("http", "https"):
            url = mirror.rstrip("/") + "/" + urllib.parse.quote(filename)
            self._download(url, filename, temp)
            return url
        if scheme == "file":
            folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(mirror).path))
        elif scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
            raise _MirrorFailure(
                f"unsupported mirror scheme {scheme!r}; use a folder, file:// or http(s)://"
            )
        else:
            folder = Path(mirror).expanduser()
        source = folder / filename
        _copy_local(source, filename, temp)
        return str(source)

    def _download(self, url: str, filename: str, temp: Path) -> None:
        # Hand-written on purpose: urllib3's Retry retries a request until its
        # headers arrive, but most failures here come later, while the body
        # streams (a stall, a dropped or short body), and each retry must resume
        # from the bytes already on disk with a new Range header. No library
        # does resume-from-partial, so one loop counts every kind of attempt.
        attempt = 0
        while True:
            try:
                self._attempt(url, filename, temp)
                return
            except _Transient as failure:
                if attempt >= self.retries:
                    tries = f" ({attempt + 1} attempts)" if attempt else ""
                    raise _MirrorFailure(failure.reason + tries, failure.unreachable) from None
                delay = self.backoff_s * 2**attempt
                attempt += 1
                log.info(
                    "%s: %s from %s; retry %d of %d in %.1f s",
                    filename,
                    failure.reason,
                    url,
                    attempt,
                    self.retries,
                    delay,
                )
                time.sleep(delay)

    def _attempt(self, url: str, filename: str, temp: Path) -> None:
        """One HTTP request; resumes from the bytes ``temp`` already holds."""
        have = temp.stat().st_size
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)  # noqa: S310
        except urllib.error.HTTPError as error:
            error.close()
            reason = f"HTTP {error.code} {error.reason}"
            if error.code == 416 and have:
                # Our partial copy does not fit the server's file: start over.
                temp.write_bytes(b"")
                raise _Transient(f"{reason} for a resumed download") from None
            if error.code >= 500 or error.code in (408, 429):
                raise _Transient(reason) from None
            raise _MirrorFailure(reason) from None
        except urllib.error.URLError as error:
            raise self._connection_failure(error.reason, unreachable=True) from None
        except (OSError, http.client.HTTPException) as error:
            raise self._connection_failure(error, unreachable=True) from None

        with response:
            mode = "wb"
            if have and response.status == 206:
                content_range = response.headers.get("Content-Range", "")
                if content_range.startswith(f"bytes {have}-"):
                    mode = "ab"
                    log.info("%s: resuming at byte %d", filename, have)
                else:
                    log.info(
                        "%s: unexpected Content-Range %r; starting over", filename, content_range
                    )
            elif have:
                log.info("%s: %s ignored the Range request; starting over", filename, url)
            start = have if mode == "ab" else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            if not start:
                log.info("%s: downloading from %s", filename, url)
            received = start
            try:
                with temp.open(mode) as out, _progress_bar(filename, total, start) as bar:
                    # read1 hands over what has arrived: bytes received before a
                    # stall are kept for the resume instead of dying in a buffer.
                    while chunk := response.read1(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise self._connection_failure(error, received=received, total=total) from None
        # http.client reads a short body as a clean end of file: count the bytes.
        if total is not None and received < total:
            raise _Transient(f"connection dropped, {_received(received, total)}")

    def _connection_failure(
        self,
        error: BaseException | str,
        *,
        unreachable: bool = False,
        received: int | None = None,
        total: int | None = None,
    ) -> _MirrorFailure:
        where = ""
        if received is not None:
            where = f", {_received(received, total)}"
        if isinstance(error, TimeoutError | socket.timeout):
            return _Transient(f"timed out after {self.timeout_s:g} s{where}", unreachable)
        if isinstance(error, ConnectionRefusedError):
            return _Transient("connection refused", unreachable)
        if isinstance(error, socket.gaierror):
            # Only EAI_AGAIN is worth a retry; an unknown name stays unknown.
            kind = _Transient if error.errno == socket.EAI_AGAIN else _MirrorFailure
            return kind(f"host not found ({error.strerror})", unreachable)
        if isinstance(error, ssl.SSLError):
            return _MirrorFailure(f"TLS error ({error.reason or error})", unreachable)
        dropped = (
            ConnectionResetError,
            BrokenPipeError,
            http.client.RemoteDisconnected,
            http.client.IncompleteRead,
        )
        if isinstance(error, dropped):
            return _Transient(f"connection dropped{where}")
        return _Transient(f"{type(error).__name__}: {error}{where}", unreachable)


def _received(received: int, total: int | None) -> str:
    return f"{received} of {total} bytes received" if total else f"{received} bytes received"


def _check(path: Path, filename: str, sha256: str) -> str | None:
    """None when ``path`` holds the expected content, else what is wrong with it."""
    try:
        actual = content_sha256(path, is_gzip_name(filename))
    except ValueError as error:
        return str(error)
    except OSError as error:
        return f"unreadable ({error.strerror})"
    if actual != sha256:
        return (
            f"checksum mismatch: content SHA-256 {actual[:16]}..., "
            f"expected {sha256[:16]}... for {filename}"
        )
    return None


def _copy_local(source: Path, filename: str, temp: Path) -> None:
    if not source.is_file():
        raise _MirrorFailure(f"not found: {source}")
    try:
        with (
            source.open("rb") as reader,
            temp.open("wb") as out,
            _progress_bar(filename, source.stat().st_size) as bar,
        ):
            shutil.copyfileobj(reader, CallbackIOWrapper(bar.update, out, "write"))
    except OSError as error:
        raise _MirrorFailure(f"cannot read {source}: {error.strerror or error}") from None


def _progress_bar(filename: str, total: int | None, initial: int = 0) -> tqdm:
    # disable=None draws the bar on a terminal only: a carriage-return bar
    # written into a log file is unreadable, and the log lines say it all there.
    return tqdm(
        desc=filename, total=total, initial=initial, unit="B", unit_scale=True, disable=None
    )
