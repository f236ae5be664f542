"""Download the four MNIST files from the first mirror that serves a verified copy.

`MNIST_MIRROR` (an http(s):// or file:// URL prefix, or a plain directory) is tried before the built-in
public mirrors. Every file is verified by the MD5 of its decompressed payload, so a re-compressed copy is
accepted and a damaged one never is. How each failure is handled:

- transient (HTTP 5xx, 408, 429, a dropped connection, a transfer cut short): retried on the same mirror
  with exponential backoff (`backoff`, 2 x `backoff`, ...), up to `retries` attempts;
- permanent for this file (HTTP 4xx, a missing file, a damaged gzip, a checksum mismatch): the next
  mirror is tried at once;
- a mirror that stays silent for `timeout` seconds (it accepted the connection but never answers), or
  whose host does not exist: abandoned at once, and skipped for the remaining files too.

When no mirror serves a file, one error lists what each mirror did and how to set MNIST_MIRROR. Nothing
is written until all four files are verified, so a failure leaves no file behind.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.common import atomic
from pipeline.common.errors import GanpipeError
from pipeline.data.mnist import FILES, payload_md5

PUBLIC_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
CHUNK = 1 << 16
RETRY_HTTP = frozenset({408, 429, 500, 502, 503, 504})

# progress(file_name, bytes_done, bytes_total_or_None)
Progress = Callable[[str, int, "int | None"], None]


def mirrors_from_env(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    first = env.get("MNIST_MIRROR", "").strip()
    return ([first] if first else []) + list(PUBLIC_MIRRORS)


def file_url(mirror: str, name: str) -> str:
    """URL of `name` on a mirror given as a URL prefix or a plain directory path."""
    if "://" not in mirror:
        return Path(mirror).expanduser().resolve().joinpath(name).as_uri()
    return mirror.rstrip("/") + "/" + name


class _Transient(Exception):
    """Worth another attempt on the same mirror after a pause."""


class _Permanent(Exception):
    """Retrying this file on this mirror cannot help; the next mirror is tried."""


class _Abandon(Exception):
    """The mirror itself is unusable (silent, nonexistent host, unsupported URL): skip it from now on."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _classify_url_error(exc: urllib.error.URLError, url: str, timeout: float) -> Exception:
    reason = exc.reason
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return _Abandon(f"did not answer within {timeout:g} s, abandoned")
    if isinstance(reason, FileNotFoundError):
        folder = Path(reason.filename).parent if reason.filename else None
        if folder is not None and not folder.is_dir():
            return _Abandon(f"no such directory ({folder})")
        return _Permanent("no such file")
    if isinstance(reason, IsADirectoryError):
        return _Permanent("a directory, not a file")
    if isinstance(reason, PermissionError):
        return _Permanent("permission denied")
    if isinstance(reason, NotADirectoryError):
        return _Abandon("the mirror path is not a directory")
    if isinstance(reason, socket.gaierror):
        if reason.errno == socket.EAI_AGAIN:
            return _Transient(f"host name lookup failed temporarily ({_one_line(reason.strerror)})")
        return _Abandon(f"host not found ({_one_line(reason.strerror)}; no network, or a typo in the URL?)")
    if isinstance(reason, ConnectionRefusedError):
        return _Transient("connection refused (nothing listening at that address)")
    if isinstance(reason, str) and reason.startswith("unknown url type"):
        return _Abandon(f"unsupported URL ({reason}); use http://, https://, file:// or a directory path")
    if isinstance(reason, OSError):
        return _Transient(f"unreachable ({_one_line(reason.strerror or reason)})")
    return _Transient(f"unreachable ({_one_line(reason)})")


def _fetch(url: str, timeout: float, on_bytes: Callable[[int, int | None], None]) -> tuple[bytes, int | None]:
    """The bytes at `url` and the length the server announced; failures raise _Transient, _Permanent or
    _Abandon."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            total = int(length) if length and length.strip().isdigit() else None
            chunks, done = [], 0
            while chunk := resp.read(CHUNK):
                chunks.append(chunk)
                done += len(chunk)
                on_bytes(done, total)
    except urllib.error.HTTPError as exc:
        status = f"HTTP {exc.code} {_one_line(exc.reason)}".rstrip()
        exc.close()
        if exc.code in RETRY_HTTP or exc.code >= 500:
            raise _Transient(status) from None
        raise _Permanent(status) from None
    except urllib.error.URLError as exc:
        raise _classify_url_error(exc, url, timeout) from None
    except (TimeoutError, socket.timeout):
        raise _Abandon(f"did not answer within {timeout:g} s, abandoned") from None
    except (http.client.HTTPException, OSError) as exc:  # reset, dropped connection, bad response
        raise _Transient(f"connection failed ({type(exc).__name__}: {_one_line(exc) or 'no detail'})") from None
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise _Transient(f"connection closed after {len(data)} of {total} bytes")
    return data, total


def _verify(data: bytes, total: int | None, expected: str) -> None:
    try:
        digest = payload_md5(data)
    except ValueError as exc:
        reason = f"served a damaged file ({len(data)} bytes, {exc})"
        if total is None:  # without an announced length the transfer may have been cut: try again
            raise _Transient(reason) from None
        raise _Permanent(reason) from None
    if digest != expected:
        raise _Permanent(f"checksum mismatch: the payload's MD5 is {digest}, expected {expected}")


@dataclass
class _Outcome:
    """What one mirror did for one file, for the final error message."""

    url: str
    what: str
    attempts: int = 1

    def __str__(self) -> str:
        tries = f" ({self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.url}: {self.what}{tries}"


@dataclass
class _AllFailed(Exception):
    name: str
    outcomes: list[_Outcome] = field(default_factory=list)


def _fetch_from_mirrors(
    name: str,
    mirrors: list[str],
    *,
    timeout: float,
    retries: int,
    backoff: float,
    progress: Progress | None,
    sleep: Callable[[float], None],
    abandoned: dict[str, str],
) -> tuple[bytes, str]:
    expected = FILES[name]
    failed = _AllFailed(name)
    retries = max(1, retries)

    def on_bytes(done: int, total: int | None) -> None:
        if progress is not None:
            progress(name, done, total)

    for mirror in mirrors:
        url = file_url(mirror, name)
        if mirror in abandoned:
            failed.outcomes.append(_Outcome(url, f"skipped: {abandoned[mirror]} for an earlier file"))
            continue
        for attempt in range(1, retries + 1):
            try:
                data, total = _fetch(url, timeout, on_bytes)
                _verify(data, total, expected)
                return data, mirror
            except _Transient as exc:
                if attempt < retries:
                    sleep(backoff * 2 ** (attempt - 1))
                    continue
                failed.outcomes.append(_Outcome(url, str(exc), attempt))
            except _Permanent as exc:
                failed.outcomes.append(_Outcome(url, str(exc), attempt))
            except _Abandon as exc:
                abandoned[mirror] = str(exc)
                failed.outcomes.append(_Outcome(url, str(exc), attempt))
            break
    raise failed


def _mirror_advice() -> str:
    current = os.environ.get("MNIST_MIRROR", "").strip()
    now = f'MNIST_MIRROR is set to "{current}"' if current else "MNIST_MIRROR is not set"
    return (
        f"{now}; point it at a mirror you can reach: an http(s):// or file:// URL prefix, or a directory "
        "holding the four *-idx?-ubyte.gz files, given as an absolute path, e.g. "
        'export MNIST_MIRROR="$(realpath ../shared/mnist)", then run again.'
    )


def _failure_message(failed: _AllFailed, written: str) -> str:
    what = "; ".join(f"({i}) {o}" for i, o in enumerate(failed.outcomes, 1)) or "(no mirrors were given)"
    return (
        f"could not download a verified copy of {failed.name} from any of {len(failed.outcomes)} mirrors. "
        f"What each mirror did: {what}. {written}{_mirror_advice()}"
    )


def fetch_verified(
    name: str,
    mirrors: list[str],
    *,
    timeout: float,
    retries: int,
    backoff: float,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bytes, str]:
    """Return (gzip bytes, mirror) of the first copy of `name` whose payload MD5 matches.

    `timeout` is how long a mirror may stay silent (connecting, or between two reads); `retries` is the
    number of attempts per mirror for a transient failure; the pauses between them are `backoff`,
    2 x `backoff`, 4 x `backoff`, ... taken through `sleep`.
    """
    try:
        return _fetch_from_mirrors(
            name, mirrors, timeout=timeout, retries=retries, backoff=backoff, progress=progress,
            sleep=sleep, abandoned={},
        )
    except _AllFailed as failed:
        raise GanpipeError(_failure_message(failed, "")) from None


def download_all(
    out_dir: Path,
    mirrors: list[str],
    *,
    timeout: float,
    retries: int,
    backoff: float,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Download and verify all four files, then write them into out_dir; return name -> mirror used.

    Nothing is written until all four are verified, and each file is written atomically, so a failure
    leaves no partial set behind. A mirror abandoned for one file is not waited on again for the next.
    """
    out_dir = Path(out_dir)
    abandoned: dict[str, str] = {}
    fetched: dict[str, tuple[bytes, str]] = {}
    for name in FILES:
        try:
            fetched[name] = _fetch_from_mirrors(
                name, mirrors, timeout=timeout, retries=retries, backoff=backoff, progress=progress,
                sleep=sleep, abandoned=abandoned,
            )
        except _AllFailed as failed:
            raise GanpipeError(_failure_message(failed, f"Nothing was written to {out_dir}. ")) from None
    written: list[Path] = []
    try:
        for name, (data, _) in fetched.items():
            atomic.write_bytes(out_dir / name, data)
            written.append(out_dir / name)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise GanpipeError(
            f"could not write the MNIST files into {out_dir} ({_one_line(exc)}); nothing was kept there. "
            "Free some disk space or fix the folder's permissions, then run again."
        ) from None
    return {name: mirror for name, (_, mirror) in fetched.items()}
