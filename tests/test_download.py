"""Tests for itemjax.data.download: hashing and atomic, checksummed fetch() (local file:// URLs only)."""

import hashlib
import io
import urllib.error

import pytest

from itemjax.data import download
from itemjax.data.download import DownloadFailed, fetch, md5_file, sha256_file
from itemjax.errors import DataError

PAYLOAD = b"user item\n" + bytes(range(256)) * 40  # binary-safe, > one tqdm tick


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "server" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_hashes_match_hashlib(source):
    assert sha256_file(source) == hashlib.sha256(PAYLOAD).hexdigest()
    assert md5_file(source) == hashlib.md5(PAYLOAD).hexdigest()


def test_fetch_good_hash_writes_exact_bytes_and_nothing_else(source, tmp_path):
    dest = tmp_path / "cache" / "nested" / "payload.bin"
    result = fetch(
        source.as_uri(),
        dest,
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        md5=hashlib.md5(PAYLOAD).hexdigest().upper(),  # case-insensitive
        progress=False,
    )
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["payload.bin"]


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_fetch_bad_hash_names_both_hashes_and_leaves_nothing(source, tmp_path, algorithm):
    dest = tmp_path / "cache" / "payload.bin"
    wrong = "0" * len(hashlib.new(algorithm).hexdigest())
    with pytest.raises(DataError) as caught:
        fetch(source.as_uri(), dest, progress=False, **{algorithm: wrong})
    message = str(caught.value)
    assert not isinstance(caught.value, DownloadFailed)
    assert wrong in message and hashlib.new(algorithm, PAYLOAD).hexdigest() in message
    assert source.as_uri() in message and "\n" not in message
    assert _leftovers(dest.parent) == []


def test_failed_fetch_keeps_previous_complete_file(source, tmp_path):
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"previous good copy")
    with pytest.raises(DataError):
        fetch(source.as_uri(), dest, sha256="f" * 64, progress=False)
    assert dest.read_bytes() == b"previous good copy"
    assert _leftovers(tmp_path) == ["payload.bin", "server"]


class _TruncatedResponse(io.BytesIO):
    """A response that announces more bytes than it delivers, or breaks mid-stream."""

    def __init__(self, body, announced, fail_after=None):
        super().__init__(body)
        self.headers = {"Content-Length": str(announced)}
        self.fail_after = fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 100) if size and size > 0 else 100)


@pytest.mark.parametrize("fail_after", [None, 300])
def test_partial_download_is_never_taken_for_complete(tmp_path, monkeypatch, fail_after):
    body = PAYLOAD[:1000]
    monkeypatch.setattr(
        download.urllib.request, "urlopen", lambda url, timeout: _TruncatedResponse(body, len(PAYLOAD), fail_after)
    )
    dest = tmp_path / "payload.bin"
    with pytest.raises(DownloadFailed) as caught:
        fetch("https://example.invalid/payload.bin", dest, progress=False)  # no hash: only the length can tell
    assert "example.invalid/payload.bin" in str(caught.value)
    assert ("incomplete" in str(caught.value)) == (fail_after is None)
    assert _leftovers(tmp_path) == []


def test_offline_is_download_failed_naming_url(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(DownloadFailed) as caught:
        fetch("https://example.invalid/x.zip", tmp_path / "x.zip", progress=False)
    assert "https://example.invalid/x.zip" in str(caught.value)
    assert "Name or service not known" in str(caught.value)
    assert _leftovers(tmp_path) == []


def test_missing_local_source_is_download_failed(tmp_path):
    with pytest.raises(DownloadFailed):
        fetch((tmp_path / "absent.txt").as_uri(), tmp_path / "out" / "absent.txt", progress=False)
    assert _leftovers(tmp_path / "out") == []
