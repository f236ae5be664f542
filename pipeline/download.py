"""Download the four MNIST files from the first mirror that serves a verified copy.

`MNIST_MIRROR` (an http(s):// or file:// URL prefix, or a plain directory) is tried before the built-in
public mirrors. Every file is verified by the MD5 of its decompressed payload; network errors are
retried with exponential backoff; each request has a timeout, so a hanging mirror is abandoned.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import atomic
from pipeline.errors import GanpipeError
from pipeline.mnist import FILES, payload_md5

PUBLIC_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
CHUNK = 1 << 16

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


class _Permanent(Exception):
    """A failure that retrying the same mirror cannot fix (missing file, bad checksum)."""


def _fetch(url: str, timeout: float, on_bytes: Callable[[int, int | None], None]) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            total = int(total) if total and total.isdigit() else None
            chunks, done = [], 0
            while chunk := resp.read(CHUNK):
                chunks.append(chunk)
                done += len(chunk)
                on_bytes(done, total)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
        raise
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            raise _Permanent(f"no such file ({exc.reason.filename or url})") from None
        raise
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise OSError(f"connection closed after {len(data)} of {total} bytes")
    return data


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


@dataclass
class Attempts:
    """What each mirror did for one file, for the final error message."""

    log: list[str] = field(default_factory=list)


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
    """Return (gzip bytes, mirror) of the first copy of `name` whose payload MD5 matches."""
    expected = FILES[name]
    attempts = Attempts()
    for mirror in mirrors:
        url = file_url(mirror, name)
        for attempt in range(1, retries + 1):
            try:
                data = _fetch(url, timeout, lambda done, total: progress and progress(name, done, total))
                try:
                    digest = payload_md5(data)
                except ValueError as exc:
                    raise OSError(f"corrupt download: {exc}") from None
                if digest != expected:
                    raise _Permanent(f"checksum mismatch (payload MD5 {digest}, expected {expected})")
                return data, mirror
            except _Permanent as exc:
                attempts.log.append(f"{url}: {exc}")
                break
            except (OSError, urllib.error.URLError) as exc:  # timeouts, resets, 5xx, truncation
                attempts.log.append(f"{url}: {_describe(exc)} (attempt {attempt}/{retries})")
                if attempt < retries:
                    sleep(backoff * 2 ** (attempt - 1))
    tried = "; ".join(attempts.log) or "no mirrors configured"
    raise GanpipeError(
        f"could not download a verified copy of {name}. What each mirror did: {tried}. Point "
        "MNIST_MIRROR at a mirror you can reach: an http(s):// or file:// URL prefix, or a directory "
        "holding the four *-idx?-ubyte.gz files, as an absolute path, e.g. "
        'export MNIST_MIRROR="$(realpath ../shared/mnist)".'
    )


def download_all(
    out_dir: Path,
    mirrors: list[str],
    *,
    timeout: float,
    retries: int,
    backoff: float,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Download and verify all four files, then write them into out_dir; return name -> mirror used.

    Nothing is written until all four are verified, so a failure leaves no partial set behind.
    """
    fetched = {
        name: fetch_verified(name, mirrors, timeout=timeout, retries=retries, backoff=backoff, progress=progress)
        for name in FILES
    }
    for name, (data, _) in fetched.items():
        atomic.write_bytes(out_dir / name, data)
    return {name: mirror for name, (_, mirror) in fetched.items()}
