"""decode_worker.py: real child processes that crash, hang or succeed.

The decode functions below run inside the workers (pickled by reference), so a crash
here is a real dead process, not a mock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import file_url
from fastslow_cli.media import location
from fastslow_cli.media.pool import DecodePool, DecodeResult
from fastslow_cli.errors import UsageError
from fastslow_cli.media.discover import MediaFile, find_media
from fastslow_cli.media.decode import Decoded, decode

REPO = Path(__file__).resolve().parents[1]


def crash_in_decord(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """SIGSEGV when decord is asked for a file named *crash*; PyAV works."""
    if "crash" in item.name and decoder == "decord":
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode(item, size, frames, decoder)


def crash_always(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """SIGSEGV on *crash* files, SIGABRT on *abort* files, whatever the decoder."""
    if "crash" in item.name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "abort" in item.name:
        os.abort()
    return decode(item, size, frames, decoder)


def hang_in_decord(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """Sleeps far past any test timeout when decord is asked for a *hang* file."""
    if "hang" in item.name and decoder == "decord":
        time.sleep(120)
    return decode(item, size, frames, decoder)


def slow_first(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """Delays *slow* files so later items finish first and must be held back."""
    if "slow" in item.name:
        time.sleep(0.5)
    return decode(item, size, frames, decoder)


def hang_and_tell(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """On *hang* files: writes this worker's pid next to the file, then hangs."""
    if "hang" in item.name:
        Path(item.path).with_suffix(f".{os.getpid()}.pid").write_text("")
        time.sleep(120)
    return decode(item, size, frames, decoder)


def fetch_then_crash(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """On *crash* objects: fetches the local copy, notes where it is, then dies (SIGSEGV)."""
    with location.local_copy(item.path) as copy:
        if "crash" in item.name:
            Path(item.path.removeprefix("file://") + ".copy").write_text(copy)
            os.kill(os.getpid(), signal.SIGSEGV)
        return decode(item, size, frames, decoder)


def noisy(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """Writes to stdout and stderr, as ffmpeg inside decord does."""
    print("python noise")
    os.write(1, b"fd 1 noise\n")
    os.write(2, b"fd 2 noise\n")
    return decode(item, size, frames, decoder)


def _copies(source: Path, folder: Path, names: list[str]) -> list[MediaFile]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source, folder / name)
    return find_media([folder])


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while reading
        return False


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _ok(result: DecodeResult) -> bool:
    return result.decoded is not None and result.error is None


def test_good_and_broken_files_in_input_order(media_dir):
    items = find_media([media_dir / "good", media_dir / "broken"])
    with DecodePool(size=16, frames=4, workers=2, timeout=30) as pool:
        results = list(pool.imap(items))
        pids = pool.pids
    assert [r.item for r in results] == items
    assert not _wait_gone(pids)
    for r in results:
        assert r.attempts
        if Path(r.item.path).parent.name == "broken":
            assert r.decoded is None and r.error and "\n" not in r.error, r
            # videos: decord failed, then PyAV was tried; images: Pillow once
            assert [a.split(":")[0] for a in r.attempts] == (
                ["decord", "av"] if r.item.kind == "video" else ["pillow"]
            )
        else:
            assert _ok(r), r
            assert r.decoded.frames.shape[1:] == (16, 16, 3)
            assert r.attempts == [f"{r.decoded.decoder}: ok"]
            assert r.decoded.decoder == ("decord" if r.item.kind == "video" else "pillow")
    by_name = {r.item.name: r for r in results}
    assert by_name["empty.mp4"].error == "empty file"
    assert by_name["no_frames.mp4"].error == "no decodable frames"
    assert len(by_name["short.mp4"].decoded.frames) == 3


def test_decord_crash_falls_back_to_pyav(tmp_path, good_media):
    items = _copies(good_media["clip"], tmp_path, ["a_crash.mp4", "b_fine.mp4"])
    with DecodePool(size=16, frames=4, workers=1, decode_fn=crash_in_decord) as pool:
        crashed, fine = pool.imap(items)
    assert crashed.attempts == ["decord: crashed (signal SIGSEGV)", "av: ok"]
    assert _ok(crashed) and crashed.decoded.decoder == "av" and len(crashed.decoded.frames) == 4
    assert fine.attempts == ["decord: ok"]


def test_crash_in_every_decoder_is_an_error_and_the_run_goes_on(tmp_path, good_media):
    names = ["a_crash.mp4", "b_fine.mp4", "c_abort.mp4", "d_fine.mp4"]
    items = _copies(good_media["clip"], tmp_path, names)
    with DecodePool(size=16, frames=2, workers=1, decode_fn=crash_always) as pool:
        results = list(pool.imap(items))
    assert [r.item.name for r in results] == names
    crash, fine1, abort, fine2 = results
    assert crash.decoded is None and crash.error == "decoder crashed (SIGSEGV)"
    assert crash.attempts == ["decord: crashed (signal SIGSEGV)", "av: crashed (signal SIGSEGV)"]
    assert abort.error == "decoder crashed (SIGABRT)"
    assert _ok(fine1) and _ok(fine2)


def test_a_crash_while_decoding_an_object_leaves_no_copy(tmp_path, good_media):
    items = _copies(good_media["clip"], tmp_path, ["a_crash.mp4", "b_fine.mp4"])
    objects = [replace(m, id=file_url(Path(m.path)), path=file_url(Path(m.path))) for m in items]
    with DecodePool(size=16, frames=2, decoder="av", workers=1, decode_fn=fetch_then_crash) as pool:
        crashed, fine = pool.imap(objects)
    assert crashed.error == "decoder crashed (SIGSEGV)" and _ok(fine)
    copy = Path((tmp_path / "a_crash.mp4.copy").read_text())
    assert copy.parent.name.startswith("fastslow-fetch-") and not copy.parent.exists()  # cleared by the pool


def test_decoder_choice_is_respected(tmp_path, good_media):
    items = _copies(good_media["clip"], tmp_path, ["crash.mp4", "fine.mp4"])
    with DecodePool(size=16, frames=2, decoder="decord", workers=1, decode_fn=crash_in_decord) as pool:
        crashed, fine = pool.imap(items)
    assert crashed.attempts == ["decord: crashed (signal SIGSEGV)"] and crashed.decoded is None
    with DecodePool(size=16, frames=2, decoder="av", workers=1, decode_fn=crash_in_decord) as pool:
        results = list(pool.imap(items))
    assert [r.attempts for r in results] == [["av: ok"], ["av: ok"]]
    with pytest.raises(UsageError, match="--decoder"):
        DecodePool(size=16, frames=2, decoder="opencv")


def test_hang_is_killed_after_timeout_and_retried(tmp_path, good_media):
    items = _copies(good_media["clip"], tmp_path, ["a_hang.mp4", "b_fine.mp4"])
    start = time.monotonic()
    with DecodePool(size=16, frames=2, workers=2, timeout=2.0, decode_fn=hang_in_decord) as pool:
        results = list(pool.imap(items))
    assert time.monotonic() - start < 20
    hung, fine = results
    assert hung.attempts == ["decord: timed out after 2 s", "av: ok"] and _ok(hung)
    assert fine.attempts == ["decord: ok"]


def test_results_stay_in_order_and_input_is_read_lazily(tmp_path, good_media):
    items = _copies(good_media["png"], tmp_path, ["a_slow.png"] + [f"b{i:02}.png" for i in range(11)])
    items += _copies(good_media["png"], tmp_path / "later", [f"c{i:02}.png" for i in range(30)])
    pulled = 0

    def source():
        nonlocal pulled
        for item in items:
            pulled += 1
            yield item

    with DecodePool(size=8, frames=1, workers=2, decode_fn=slow_first) as pool:
        stream = pool.imap(source())
        first = next(stream)
        assert first.item == items[0] and _ok(first)
        assert pulled <= 4 * 2 + 1  # a bounded window, not the whole input
        rest = list(stream)
    assert [r.item for r in [first, *rest]] == items


def test_abandoned_iteration_and_close_leave_no_process(tmp_path, good_media):
    items = _copies(good_media["png"], tmp_path, ["a_fine.png"])
    items += _copies(good_media["clip"], tmp_path / "v", ["hang1.mp4", "hang2.mp4"])
    pool = DecodePool(size=8, frames=1, workers=2, timeout=60, decode_fn=hang_and_tell)
    stream = pool.imap(items)
    assert _ok(next(stream))  # meanwhile one or both workers took a hang*.mp4
    hung = _wait_for_pids(tmp_path / "v", 1)
    every = pool.pids
    assert set(hung) <= set(every) and len(every) == 2 and all(_alive(p) for p in every)
    stream.close()  # the consumer gives up: busy workers are killed
    assert not _wait_gone(hung) and not set(hung) & set(pool.pids)
    pool.close()
    pool.close()
    assert pool.pids == [] and not _wait_gone(every)


def _wait_for_pids(folder: Path, count: int, seconds: float = 15.0) -> list[int]:
    """Pids written by `hang_and_tell` workers, once `count` of them are hanging."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = [int(p.name.split(".")[-2]) for p in folder.glob("*.pid")]
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"workers did not start within {seconds} s")


_PARENT = """
import sys
sys.path.insert(0, sys.argv[2])
from fastslow_cli.media.pool import DecodePool
from fastslow_cli.media.discover import find_media
from test_decode_worker import hang_and_tell
with DecodePool(size=8, frames=1, workers=2, timeout=600, decode_fn=hang_and_tell) as pool:
    for result in pool.imap(find_media([sys.argv[1]])):
        pass
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_parent_interrupted_or_killed_leaves_no_worker(how, tmp_path, good_media):
    media = tmp_path / "media"
    _copies(good_media["clip"], media, ["hang1.mp4", "hang2.mp4"])
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:  # a file, not a pipe: no wait on whoever inherited it
        parent = subprocess.Popen(
            [sys.executable, "-c", _PARENT, os.fspath(media), os.fspath(Path(__file__).parent)],
            cwd=REPO, stderr=err,
        )
    pids: list[int] = []
    try:
        pids = _wait_for_pids(media, 2)
        assert all(_alive(p) for p in pids)
        parent.send_signal(how)
        assert parent.wait(timeout=30) != 0
        if how == signal.SIGINT:
            assert "KeyboardInterrupt" in log.read_text()
        assert not _wait_gone(pids), "decode workers outlived their parent"
    finally:  # never leave hung processes behind, even when the test fails
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in filter(_alive, pids):
            with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
                os.kill(pid, signal.SIGKILL)


_NOISY_PARENT = """
import sys
sys.path.insert(0, sys.argv[2])
from fastslow_cli.media.pool import DecodePool
from fastslow_cli.media.discover import find_media
from test_decode_worker import noisy
with DecodePool(size=8, frames=1, workers=2, decode_fn=noisy) as pool:
    for result in pool.imap(find_media([sys.argv[1]])):
        print(result.attempts[-1])
"""


def test_worker_output_never_reaches_stdout_or_stderr(tmp_path, good_media):
    _copies(good_media["png"], tmp_path, ["a.png", "b.png"])
    proc = subprocess.run(
        [sys.executable, "-c", _NOISY_PARENT, os.fspath(tmp_path), os.fspath(Path(__file__).parent)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "pillow: ok\npillow: ok\n"  # clean for --json
    assert "noise" not in proc.stderr
