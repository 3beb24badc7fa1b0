"""Bad input through the CLI on a tiny real workspace (random tiny models saved to disk,
an index built from them): one line on stderr naming what is wrong, never an internal
error, and the rest of a batch still answered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Ran, run_cli

from fastslow_cli.index.folder import build_index
from fastslow_cli.index.hnsw import AnnParams
from fastslow_cli.models.checkpoint import save_model
from fastslow_cli.models.export import export_query_graph
from fastslow_cli.search.retrievers import load_native

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def run(ws: Path, *args: str, stdin: bytes | None = None) -> Ran:
    """`fastslow ARGS` on `ws` in this process; signals and read-only mounts below use subprocesses."""
    return run_cli(*args, env={"FASTSLOW_WORKSPACE": str(ws)}, stdin=stdin)


@pytest.fixture(scope="module")
def tiny_ws(index_kit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORKSPACE with feature set `test` (12 items), models `fast` and `slow` (ONNX graphs too), index `default`,
    and `../captions.jsonl` (8 train and 4 val items)."""
    ws = tmp_path_factory.mktemp("tiny") / "ws"
    store = index_kit.make_store(ws, count=12)
    captions = [
        {"media": entry.path, "caption": index_kit.captions[i % len(index_kit.captions)], "split": "train" if i < 8 else "val"}
        for i, entry in enumerate(store.entries().values())
    ]
    (ws.parent / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
    features = {"fingerprint": store.fingerprint(), "set": "test"}
    for retriever in index_kit.make_models(store):  # with their ONNX graphs, as a user's models come
        save_model(ws / "models" / retriever.kind, retriever.model, retriever.tokenizer, features)
        export_query_graph(ws / "models" / retriever.kind, retriever.model)
    fast, slow = (load_native(ws / "models" / kind, kind, "cpu") for kind in ("fast", "slow"))
    build_index(store, ws / "index" / "default", fast, slow, AnnParams(M=8, ef_construction=32, ef_search=32))
    return ws


def test_stdin_line_not_utf8_is_skipped_and_named(tiny_ws: Path) -> None:
    out = run(tiny_ws, "search", "-", "--json", "-k", "3", stdin=b"a red circle\na red \xff\xfe circle\n?!\r\na dog\r\n")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "internal error" not in out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["query"] for r in rows] == ["a red circle"] * 3 + ["a dog"] * 3  # CRLF stripped
    skipped = [line for line in out.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2
    assert skipped[0].startswith("skipped stdin line 2: not valid UTF-8 (byte 0xff at position 7)")
    assert skipped[1].startswith("skipped stdin line 3: query '?!' has no words")
    assert "2 queries from stdin could not be searched" in out.stderr


def test_query_of_unknown_words_is_answered_with_a_warning(tiny_ws: Path) -> None:
    out = run(tiny_ws, "search", "-", "--json", "-k", "2", stdin="zzz qqq\na red circle\n".encode())
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["query"] for line in out.stdout.splitlines()] == ["zzz qqq"] * 2 + ["a red circle"] * 2
    assert out.stderr.splitlines() == [
        "warning: no word of 'zzz qqq' is known to the Fast model (it knows only words of the training captions): "
        "results are arbitrary"
    ]


def test_ctrl_c_in_a_stdin_batch_is_one_line(tiny_ws: Path) -> None:
    """SIGINT while `search -` waits for its next line: the answered query stays answered, one line, exit 130."""
    env = {**os.environ, "FASTSLOW_WORKSPACE": str(tiny_ws)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastslow_cli", "search", "-", "--json", "-k", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        proc.stdin.write(b"a red circle\n")
        proc.stdin.flush()
        answered = [proc.stdout.readline(), proc.stdout.readline()]  # the first query is answered at once
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert [json.loads(line)["rank"] for line in answered] == [1, 2] and rest == b""
    assert proc.returncode == 130
    assert err.decode().strip().splitlines() == [
        "error: interrupted: the results printed are complete; queries not yet answered were not searched, run them again"
    ]


def test_ctrl_c_in_training_is_one_line_and_saves_nothing(tiny_ws: Path) -> None:
    env = {**os.environ, "FASTSLOW_WORKSPACE": str(tiny_ws)}
    captions = str(tiny_ws.parent / "captions.jsonl")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastslow_cli", "train", "fast", "--set", "test", "--captions", captions,
         "--epochs", "100000", "--batch-size", "4", "--out", "interrupted"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        started = ""
        while not started.startswith("train fast:") and proc.poll() is None:  # printed as training starts
            started = proc.stderr.readline().decode()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert started.startswith("train fast: 8 train / 4 val captions")
    assert proc.returncode == 130 and "Traceback" not in err.decode()
    assert err.decode().strip().splitlines()[-1] == (
        "error: interrupted: nothing was saved (a model is written only when training ends); run the command again to train it"
    )
    assert not (tiny_ws / "models" / "interrupted").exists()


# ----------------------------------------------------------------------------- read-only workspace

RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skips unless a private read-only bind mount can be made (`unshare -rm`, no root needed)."""
    probe = tmp_path_factory.mktemp("ro-probe")
    try:
        out = subprocess.run(["unshare", "-rm", "sh", "-c", RO_MOUNT, str(probe), "touch", str(probe / "x")],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run unshare for a read-only bind mount: {exc}")
    if "Read-only file system" not in out.stderr:
        pytest.skip(f"no read-only bind mount in a user namespace here (unshare -rm): {out.stderr.strip()[:200]}")


def run_read_only(ws: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI with `ws` mounted read-only over itself, for this process only (chmod does not stop root)."""
    env = {**os.environ, "FASTSLOW_WORKSPACE": str(ws)}
    cmd = ["unshare", "-rm", "sh", "-c", RO_MOUNT, str(ws), sys.executable, "-m", "fastslow_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.usefixtures("read_only")
@pytest.mark.parametrize(
    "args, target",
    [
        (["train", "fast", "--out", "ro"], "models/ro"),
        (["train", "slow", "--out", "ro"], "models/ro"),
        (["distill", "--out", "ro"], "models/ro"),
        (["index", "build", "--name", "ro"], "index/ro"),
        (["index", "update"], "index/default"),
        (["extract", "media"], "features/new"),
    ],
)
def test_read_only_workspace_fails_at_once_in_one_line(tiny_ws: Path, args: list[str], target: str) -> None:
    """Issue 9: `train` failed after all its epochs, when saving; `index build` was an internal error."""
    if args[0] in ("train", "distill"):
        args = [*args, "--set", "test", "--captions", str(tiny_ws.parent / "captions.jsonl"), "--epochs", "50"]
    elif args[0] == "index":
        args = [*args, "--set", "test"]
    else:
        args = ["extract", str(tiny_ws / "media"), "--set", "new"]
    out = run_read_only(tiny_ws, *args)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and str(tiny_ws / target) in lines[0], out.stderr
    assert "read-only file system" in lines[0].lower() and "--workspace" in lines[0]
    assert not (tiny_ws / "models" / "ro").exists() and not (tiny_ws / "index" / "ro").exists()


@pytest.mark.usefixtures("read_only")
def test_search_works_on_a_read_only_workspace(tiny_ws: Path) -> None:
    out = run_read_only(tiny_ws, "search", "a red circle", "--json", "-k", "3", "--rerank", "2")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["rank"] for line in out.stdout.splitlines()] == [1, 2, 3]


def test_check_writable_probes_without_leaving_anything(tmp_path: Path) -> None:
    from fastslow_cli.atomic import check_writable
    from fastslow_cli.errors import FastslowError

    check_writable(tmp_path / "not" / "yet" / "made")
    assert list(tmp_path.iterdir()) == []  # nothing created, the probe removed
    (tmp_path / "models").write_text("a file where a folder should be")
    with pytest.raises(FastslowError, match=r"models is a file, not a folder"):
        check_writable(tmp_path / "models" / "fast")


@pytest.mark.parametrize("fmt", [["--json"], []])
def test_a_reader_that_goes_away_is_not_an_error(tiny_ws: Path, fmt: list[str]) -> None:
    """`fastslow search - | head -1`: once the reader has what it wants, exit 0 and say nothing
    (click turned the broken pipe into exit 1, which fails `set -o pipefail` scripts)."""
    env = {**os.environ, "FASTSLOW_WORKSPACE": str(tiny_ws)}
    script = f"{sys.executable} -m fastslow_cli search - -k 12 {' '.join(fmt)} | head -c 1"
    queries = "".join(f"a red circle {i}\n" for i in range(300)).encode()
    out = subprocess.run(["bash", "-o", "pipefail", "-c", script], input=queries, capture_output=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stderr.decode() == ""
