"""Checksummed, atomic downloads (host side, standard library + tqdm).

``fetch(url, dest)`` streams ``url`` into a temporary file *in dest's folder*
(``.<dest.name>.<random>.part``), hashes the bytes while they arrive, and only
when the byte count matches the announced ``Content-Length`` and the hash
matches the expected one does it ``os.replace`` the temporary file onto
``dest`` (atomic on POSIX). On any failure the temporary file is removed, so
``dest`` either holds a complete, verified file or does not exist: a partial
download can never be mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import http.client
import pathlib
import urllib.error
import urllib.request

from itemjax.errors import DataError
from itemjax.runio import atomic_file

__all__ = ["DownloadFailed", "fetch", "md5_file", "sha256_file"]

_CHUNK_BYTES = 1 << 20
_TIMEOUT_SECONDS = 60.0


class DownloadFailed(DataError):
    """The transfer itself failed (offline, HTTP error, connection cut short).

    Distinct from a checksum mismatch so that callers can add advice on where to
    put a manually downloaded file.
    """


def _hash_file(path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path) -> str:
    """SHA-256 (lowercase hex) of the file's bytes as stored on disk."""
    return _hash_file(path, "sha256")


def md5_file(path) -> str:
    """MD5 (lowercase hex) of the file's bytes as stored on disk."""
    return _hash_file(path, "md5")


def _progress_bar(total: int | None, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"downloading {name}",
        disable=not enabled,
        leave=False,
    )


def fetch(
    url: str,
    dest: pathlib.Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Download ``url`` to ``dest`` atomically and verify its checksum.

    Args:
      url: any URL ``urllib.request.urlopen`` accepts (https, http, file).
      dest: final path; its folder is created if missing.
      sha256, md5: expected lowercase hex digests of the downloaded bytes
        (either, both or neither).
      progress: show a tqdm byte counter.

    Returns:
      ``dest``.

    Raises:
      DownloadFailed: the transfer failed or was cut short (nothing is left behind).
      DataError: the folder is not writable, or a checksum does not match (the
        message names the URL, expected and actual hash; nothing is left behind).
    """
    dest = pathlib.Path(dest)
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # atomic_file replaces dest only when the block ends cleanly: a failed transfer or checksum
        # below raises inside it, and the partial file is deleted
        with atomic_file(dest, "wb", suffix=".part") as out:
            try:
                response = urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS)
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
                reason = getattr(err, "reason", None) or err
                raise DownloadFailed(f"could not download {url}: {reason}") from err
            with response:
                length_header = response.headers.get("Content-Length")
                expected_bytes = int(length_header) if length_header and length_header.isdigit() else None
                received = 0
                with _progress_bar(expected_bytes, dest.name, progress) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK_BYTES)
                        except (OSError, http.client.HTTPException) as err:
                            raise DownloadFailed(
                                f"download of {url} was interrupted after {received} bytes: {err}"
                            ) from err
                        if not chunk:
                            break
                        out.write(chunk)
                        for digest in digests.values():
                            digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if expected_bytes is not None and received != expected_bytes:
                raise DownloadFailed(
                    f"download of {url} is incomplete: got {received} of {expected_bytes} bytes; retry"
                )
            for algorithm, expected in (("sha256", sha256), ("md5", md5)):
                if expected is None:
                    continue
                actual = digests[algorithm].hexdigest()
                if actual != expected.lower():
                    raise DataError(
                        f"checksum mismatch for {url} (meant for {dest}): expected {algorithm} "
                        f"{expected.lower()}, got {actual}; the file was discarded, retry or check the URL"
                    )
    except OSError as err:  # the network's own errors are DownloadFailed by now: this is the disk
        raise DataError(
            f"cannot write {dest} ({err.strerror or err}); "
            "choose a writable data folder with --data-dir or ITEMJAX_DATA"
        ) from err
    return dest
