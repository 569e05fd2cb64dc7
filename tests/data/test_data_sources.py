"""Downloads: mirror order, every kind of failing mirror, resume, atomic placement."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import sys

import pytest

from reglab.data.errors import DownloadError
from reglab.data.idx import decompress
from reglab.data.sources import MIRRORS_ENV, content_sha256, fetch_files, resolve_mirrors

IMAGES = "train_images"


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_mirrors_are_tried_in_order_and_each_failure_is_logged_with_its_reason(
    synthetic, mirror_server, refused_url, fetch_options, listing, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="reglab.data.sources")
    behaviours = ["error500", "stall", "corrupt", "truncated", "wrong", "drop", "good"]
    mirrors = [refused_url] + [mirror_server.url(name) for name in behaviours]
    raw = tmp_path / "raw"
    data_file = synthetic.files[IMAGES]
    size = len(mirror_server.payloads[data_file.filename])

    paths = fetch_files({IMAGES: data_file}, mirrors, raw, **fetch_options)

    assert paths == {IMAGES: raw / data_file.filename}
    assert content_sha256(paths[IMAGES]) == data_file.sha256
    assert listing(raw) == [data_file.filename]
    # The server saw the mirrors in the configured order; transient failures were
    # retried once (retries=1), content failures were not.
    order = [behaviour for behaviour, _, _ in mirror_server.requests]
    assert order == [
        "error500", "error500", "stall", "stall", "corrupt", "truncated", "wrong",
        "drop", "drop", "good",
    ]  # fmt: skip
    name = data_file.filename
    with pytest.raises(ValueError) as corrupt:
        decompress(mirror_server.body("corrupt", name), gzipped=True)
    corrupt_reason = str(corrupt.value)
    assert corrupt_reason.startswith("corrupt gzip: ")
    wrong_sha = hashlib.sha256(gzip.decompress(mirror_server.body("wrong", name))).hexdigest()
    assert _failures(caplog) == [
        f"{name}: mirror {refused_url} failed: connection refused (2 attempts); trying the next",
        f"{name}: mirror {mirrors[1]} failed: HTTP 500 Internal Server Error (2 attempts); "
        "trying the next",
        f"{name}: mirror {mirrors[2]} failed: timed out after 0.5 s, 1000 of {size} bytes "
        "received (2 attempts); trying the next",
        f"{name}: mirror {mirrors[3]} failed: {corrupt_reason}; trying the next",
        f"{name}: mirror {mirrors[4]} failed: truncated gzip: the stream ends before its end "
        "marker; trying the next",
        f"{name}: mirror {mirrors[5]} failed: checksum mismatch: content SHA-256 "
        f"{wrong_sha[:16]}..., expected {data_file.sha256[:16]}... for "
        f"{name}; trying the next",
        f"{name}: mirror {mirrors[6]} failed: connection dropped, {size // 2} of {size} bytes "
        "received (2 attempts); trying the next",
    ]


def test_when_every_mirror_fails_the_error_lists_each_and_raw_holds_nothing(
    synthetic, mirror_server, refused_url, fetch_options, listing, tmp_path
):
    behaviours = ["missing", "error500", "truncated", "drop"]
    mirrors = [refused_url] + [mirror_server.url(name) for name in behaviours]
    raw = tmp_path / "raw"
    data_file = synthetic.files[IMAGES]
    size = len(mirror_server.payloads[data_file.filename])

    with pytest.raises(DownloadError) as caught:
        fetch_files({IMAGES: data_file}, mirrors, raw, **fetch_options)

    assert str(caught.value) == (
        f"could not fetch {data_file.filename} from any of 5 mirrors: "
        f"{refused_url} (connection refused (2 attempts)); "
        f"{mirrors[1]} (HTTP 404 Not Found); "
        f"{mirrors[2]} (HTTP 500 Internal Server Error (2 attempts)); "
        f"{mirrors[3]} (truncated gzip: the stream ends before its end marker); "
        f"{mirrors[4]} (connection dropped, {size // 2} of {size} bytes received (2 attempts)). "
        f"Check the network, or add a mirror with {MIRRORS_ENV}=url1,url2 or data.extra_mirrors"
    )
    assert "\n" not in str(caught.value)
    assert listing(raw) == []  # no partial download, no temporary file


def test_a_dropped_download_resumes_with_a_range_request(
    synthetic, mirror_server, fetch_options, tmp_path
):
    data_file = synthetic.files[IMAGES]
    size = len(mirror_server.payloads[data_file.filename])

    paths = fetch_files(
        {IMAGES: data_file}, [mirror_server.url("resume")], tmp_path, **fetch_options
    )

    assert content_sha256(paths[IMAGES]) == data_file.sha256
    assert mirror_server.requests == [
        ("resume", data_file.filename, None),
        ("resume", data_file.filename, f"bytes={size // 2}-"),
    ]


def test_a_server_that_ignores_range_is_read_again_from_the_start(
    synthetic, mirror_server, fetch_options, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="reglab.data.sources")
    data_file = synthetic.files[IMAGES]

    paths = fetch_files(
        {IMAGES: data_file}, [mirror_server.url("norange")], tmp_path, **fetch_options
    )

    assert paths[IMAGES].read_bytes() == mirror_server.payloads[data_file.filename]
    assert [header for _, _, header in mirror_server.requests][1].startswith("bytes=")
    assert "ignored the Range request; starting over" in caplog.text


def test_verified_files_are_not_downloaded_again_and_damaged_ones_are(
    synthetic, mirror_server, fetch_options, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="reglab.data.sources")
    mirrors = [mirror_server.url("good")]
    fetch_files(synthetic.files, mirrors, tmp_path, **fetch_options)
    assert mirror_server.count("good") == 4

    fetch_files(synthetic.files, mirrors, tmp_path, **fetch_options)
    assert mirror_server.count("good") == 4
    assert caplog.text.count("present and verified; not downloaded again") == 4

    labels = tmp_path / synthetic.files["train_labels"].filename
    labels.write_bytes(labels.read_bytes()[:-10])
    fetch_files(synthetic.files, mirrors, tmp_path, **fetch_options)
    assert mirror_server.count("good") == 5
    assert "present but truncated gzip" in caplog.text
    assert content_sha256(labels) == synthetic.files["train_labels"].sha256


def test_an_unreachable_mirror_is_not_waited_on_again_for_later_files(
    synthetic, mirror_server, refused_url, fetch_options, tmp_path, caplog
):
    fetch_files(
        synthetic.files, [refused_url, mirror_server.url("good")], tmp_path, **fetch_options
    )
    skipped = [line for line in _failures(caplog) if "skipped: unreachable" in line]
    assert len(skipped) == 3  # the three files after the first
    assert skipped[0].endswith("(connection refused (2 attempts)); trying the next")


def test_local_folders_and_file_urls_are_mirrors_too(synthetic, fetch_options, tmp_path, caplog):
    missing = tmp_path / "nowhere"
    mirrors = [str(missing), synthetic.folder.as_uri()]
    paths = fetch_files(synthetic.files, mirrors, tmp_path / "raw", **fetch_options)
    for key, path in paths.items():
        assert path.read_bytes() == (synthetic.folder / synthetic.files[key].filename).read_bytes()
        assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert f"failed: not found: {missing / synthetic.files[IMAGES].filename}" in caplog.text


def test_no_mirror_at_all_is_a_clear_error(synthetic, fetch_options, tmp_path):
    with pytest.raises(DownloadError, match="no mirror to fetch it from; list one in data.mirrors"):
        fetch_files(synthetic.files, [], tmp_path, **fetch_options)


def test_unsupported_scheme_is_reported(synthetic, fetch_options, tmp_path):
    with pytest.raises(DownloadError, match=r"ftp://host/ \(unsupported mirror scheme 'ftp'"):
        fetch_files(synthetic.files, ["ftp://host/"], tmp_path, **fetch_options)


def test_environment_mirrors_come_first_then_extra_then_configured():
    environ = {MIRRORS_ENV: " http://env-a/ ,, /env/b,http://config/"}
    assert resolve_mirrors(["http://config/", "/local"], ["http://extra/"], environ) == [
        "http://env-a/",
        "/env/b",
        "http://config/",
        "http://extra/",
        "/local",
    ]
    assert resolve_mirrors(["/local"], [], {}) == ["/local"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_is_drawn_on_a_terminal_and_logs_get_plain_lines_only(
    synthetic, mirror_server, fetch_options, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="reglab.data.sources")
    data_file = synthetic.files[IMAGES]
    size = len(mirror_server.payloads[data_file.filename])
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    fetch_files({IMAGES: data_file}, [mirror_server.url("resume")], tmp_path / "a", **fetch_options)
    fetch_files({IMAGES: data_file}, [str(synthetic.folder)], tmp_path / "b", **fetch_options)
    # The dropped first attempt, its resume (which starts the bar at half), the local copy.
    # Each bar is redrawn after a carriage return and closed with a newline.
    bars = [line.rsplit("\r", 1)[-1] for line in terminal.getvalue().split("\n")[:-1]]
    name = data_file.filename
    assert [bar.split("|")[0] for bar in bars] == [
        f"{name}:  50%",
        f"{name}: 100%",
        f"{name}: 100%",
    ]
    assert all(f"{size / 1000:.2f}k/{size / 1000:.2f}k [" in bar for bar in bars[1:])

    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    caplog.clear()
    fetch_files({IMAGES: data_file}, [mirror_server.url("good")], tmp_path / "c", **fetch_options)
    assert plain.getvalue() == ""
    assert [record.getMessage().split(" from ")[0] for record in caplog.records] == [
        f"{data_file.filename}: downloading",
        f"{data_file.filename}: fetched {size} bytes",
    ]
