"""The commands end to end through the CLI, on a tiny synthetic dataset: train, distill,
index, search (single and stdin batch), eval, and the refusals a user can meet."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import Ran, run_cli

from fastslow_cli.demo.synth import SynthConfig, generate


def cli(ws: Path, *args: str, stdin: str | None = None) -> Ran:
    """`fastslow ARGS` on workspace `ws`, in this process (conftest.run_cli)."""
    return run_cli(*args, env={"FASTSLOW_WORKSPACE": str(ws)}, stdin=stdin)


def ok(out: Ran) -> Ran:
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, onnx_export: None) -> dict[str, Path]:
    """A workspace with features, a fast, a slow and a distilled model (with their ONNX
    graphs, as a user gets them) and an index."""
    root = tmp_path_factory.mktemp("pipeline")
    data, ws = root / "data", root / "ws"
    captions = generate(data, SynthConfig(n_images=120, n_videos=16, seed=3))
    ok(cli(ws, "extract", str(data)))
    ok(cli(ws, "train", "fast", "--captions", str(captions), "--epochs", "2", "--batch-size", "32"))
    ok(cli(ws, "train", "slow", "--captions", str(captions), "--epochs", "1", "--batch-size", "32"))
    ok(cli(ws, "distill", "--captions", str(captions), "--epochs", "1", "--out", "distilled"))
    ok(cli(ws, "index", "build", "--model", "distilled", "--slow", "slow"))
    return {"ws": ws, "captions": captions, "data": data}


def test_models_and_index_exist(trained: dict[str, Path]) -> None:
    ws = trained["ws"]
    for name in ("fast", "slow", "distilled"):
        folder = ws / "models" / name
        assert {"config.json", "model.safetensors", "tokenizer.json", "train_log.jsonl", "query.onnx", "query.onnx.json"} <= {
            p.name for p in folder.iterdir()
        }
    for name in ("fast", "slow"):  # --batch-size 32 was used as given, not fitted to the data
        assert json.loads((ws / "models" / name / "config.json").read_text())["training"]["batch_size"] == 32
    info = json.loads(ok(cli(ws, "index", "info", "--json")).stdout)
    assert info["count"] == 136 and info["slow"] is not None


def test_training_without_a_val_split_holds_some_items_out(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTSLOW_ONNX_EXPORT", "0")  # what this test trains is never searched
    captions = [json.loads(line) for line in trained["captions"].read_text().splitlines()]
    no_val = tmp_path / "no_val.jsonl"  # elsewhere than the media: paths made absolute
    no_val.write_text("".join(json.dumps({**c, "media": str(trained["data"] / c["media"])}) + "\n"
                              for c in captions if c["split"] != "val"))
    out = ok(cli(trained["ws"], "train", "fast", "--captions", str(no_val), "--epochs", "1", "--out", "no-val"))
    note = re.search(r"so (\d+) of (\d+) training items \((\d+) captions\) are held out for validation", out.stderr)
    assert f"{no_val}: no val caption matches" in out.stderr and note, out.stderr[-2000:]
    held, items, captions_held = map(int, note.groups())
    train_items = {c["media"] for c in captions if c["split"] == "train"}
    assert items == len(train_items) and held == len(train_items) // 10  # a tenth of the training items
    log = [json.loads(line) for line in (trained["ws"] / "models" / "no-val" / "train_log.jsonl").read_text().splitlines()]
    # Validation ran on exactly the held-out items and their captions (that it beats chance
    # there is test_train's job: a model worth measuring needs more steps than this test takes).
    assert (log[-1]["val_items"], log[-1]["val_queries"]) == (held, captions_held)


def test_standard_layouts_captions_apart_from_media_and_several_files(trained: dict[str, Path], tmp_path: Path) -> None:
    """Karpathy JSON for the images and VATEX train/validation/test files for the videos, all in
    a folder of their own: --media-root finds the media, repeated --captions combine the files."""
    ws, data = trained["ws"], trained["data"]
    captions = [json.loads(line) for line in trained["captions"].read_text().splitlines()]
    images = [c for c in captions if c["media"].startswith("images/")]
    videos = [c for c in captions if c["media"].startswith("videos/")]
    ann = tmp_path / "annotations"
    ann.mkdir()
    karpathy = ann / "dataset_synth.json"
    karpathy.write_text(json.dumps({"images": [
        {"filename": Path(c["media"]).name, "split": c["split"], "sentences": [{"raw": c["caption"]}]} for c in images
    ]}))
    vatex = {}
    for split, name in (("train", "vatex_training_v1.0.json"), ("val", "vatex_validation_v1.0.json"),
                        ("test", "vatex_public_test_english_v1.1.json")):
        vatex[split] = ann / name
        vatex[split].write_text(json.dumps([
            # "videos/": the demo numbers images and videos alike, so a bare id would match both
            {"videoID": str(Path(c["media"]).with_suffix("")), "enCap": [c["caption"]]}
            for c in videos if c["split"] == split
        ]))
    files = [karpathy, vatex["train"], vatex["val"]]
    out = ok(cli(ws, "train", "fast", *(a for f in files for a in ("--captions", str(f))), "--media-root", str(data),
                 "--epochs", "1", "--out", "layouts"))
    for f, kept in zip(files, (images, [c for c in videos if c["split"] == "train"], [c for c in videos if c["split"] == "val"])):
        assert f"captions {f}: {len(kept)} of {len(kept)} captions match an item" in out.stderr
    training = json.loads((ws / "models" / "layouts" / "config.json").read_text())["training"]
    assert training["captions"] == [str(f) for f in files] and training["media_root"] == str(data)

    out = ok(cli(ws, "eval", "--captions", str(karpathy), "--captions", str(vatex["test"]), "--media-root", str(data),
                 "--fast", "layouts", "--slow", "", "--json"))
    row = json.loads(out.stdout)
    test = [c for c in captions if c["split"] == "test"]
    assert row["queries"] == len(test) and row["items"] == len({c["media"] for c in test})

    out = cli(ws, "eval", "--captions", str(karpathy), "--fast", "layouts", "--slow", "")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"in {karpathy} match an item" in out.stderr and "extract the media" not in out.stderr
    assert f"pass --media-root {os.path.realpath(data / 'images')}" in " ".join(out.stderr.split())


def test_search_json_single_and_batch_identical(trained: dict[str, Path]) -> None:
    ws = trained["ws"]
    queries = ["a red circle left of a blue square", "a green triangle moving up"]
    single = [ok(cli(ws, "search", q, "--json", "-k", "5", "--rerank", "10")).stdout for q in queries]
    batch = ok(cli(ws, "search", "-", "--json", "-k", "5", "--rerank", "10", stdin="\n".join(queries) + "\n")).stdout
    assert "".join(single) == batch
    rows = [json.loads(line) for line in batch.splitlines()]
    assert len(rows) == 10
    keys = {"query", "rank", "id", "path", "kind", "score", "fast_score", "slow_score", "timestamp", "missing", "relevance",
            "fast_rank"}
    assert all(set(r) == keys for r in rows)
    assert [r["rank"] for r in rows[:5]] == [1, 2, 3, 4, 5]
    assert all((r["timestamp"] is None) == (r["kind"] == "image") for r in rows)
    # Those ran on ONNX Runtime (the trained models have their graphs); torch gives the same answers.
    on_torch = ok(cli(ws, "search", "-", "--json", "-k", "5", "--rerank", "10", "--engine", "torch",
                      stdin="\n".join(queries) + "\n")).stdout
    torch_rows = [json.loads(line) for line in on_torch.splitlines()]
    assert [r["id"] for r in torch_rows] == [r["id"] for r in rows]
    assert np.allclose([r["score"] for r in torch_rows], [r["score"] for r in rows], atol=1e-4, rtol=0)


def _jq(x: float) -> str:
    """How jq 1.6 prints a number: integers without a fraction, others in shortest form."""
    return str(int(x)) if x == int(x) else repr(x)


def _jq_rounded(x: float) -> str:
    """How jq prints `x | . * 1000 | round / 1000` (C round: halves away from zero)."""
    return _jq(math.copysign(math.floor(abs(x * 1000) + 0.5), x) / 1000)


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_search_example_script_runs_with_jq(trained: dict[str, Path]) -> None:
    script = Path(__file__).parents[1] / "examples" / "search_with_jq.sh"
    env = {
        **os.environ,
        "FASTSLOW_WORKSPACE": str(trained["ws"]),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    out = subprocess.run(["bash", str(script), "default"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    sections: list[list[str]] = []
    for line in out.stdout.splitlines():
        if line.startswith("# "):
            sections.append([])
        else:
            sections[-1].append(line)
    first, second, third = sections
    ws = trained["ws"]
    # Each section is what `fastslow search --json` answers, reformatted by jq.
    hits = [json.loads(x) for x in ok(cli(ws, "search", "a red circle left of a blue square", "-k", "5", "--rerank", "20", "--json")).stdout.splitlines()]
    assert first == [f"{h['rank']}\t{_jq_rounded(h['score'])}\t{h['path']}" for h in hits] and len(first) == 5
    queries = "a green triangle moving up\na single white diamond\na blue square above a yellow cross\n"
    best = [json.loads(x) for x in ok(cli(ws, "search", "-", "-k", "1", "--rerank", "20", "--json", stdin=queries)).stdout.splitlines()]
    assert second == [f"{h['query']}\t{h['kind']}\t{h['path']}" for h in best] and len(second) == 3
    videos = [json.loads(x) for x in ok(cli(ws, "search", "a red circle moving left", "-k", "20", "--json")).stdout.splitlines()]
    assert third == [f"{h['path']} at {_jq(h['timestamp'])}s" for h in videos if h["kind"] == "video"]


def test_rerank_only_reorders_top_k(trained: dict[str, Path]) -> None:
    ws = trained["ws"]
    q = "a blue square above a red circle"
    plain = [json.loads(x) for x in ok(cli(ws, "search", q, "--json", "-k", "30")).stdout.splitlines()]
    reranked = [json.loads(x) for x in ok(cli(ws, "search", q, "--json", "-k", "30", "--rerank", "10")).stdout.splitlines()]
    assert {r["id"] for r in plain[:10]} == {r["id"] for r in reranked[:10]}
    assert [r["id"] for r in plain[10:]] == [r["id"] for r in reranked[10:]]
    assert all(r["slow_score"] is not None for r in reranked[:10])
    assert all(r["slow_score"] is None for r in reranked[10:])


def test_bad_queries_are_clear_errors(trained: dict[str, Path]) -> None:
    ws = trained["ws"]
    for q in ("", "   ", "?!"):
        out = cli(ws, "search", q)
        assert out.returncode == 2 and "Traceback" not in out.stderr and "query" in out.stderr
    out = cli(ws, "search", "-", "--json", stdin="a red circle\n?!\na blue square\n")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stdout.splitlines()) == 20  # the two good queries were answered


def test_eval_json(trained: dict[str, Path]) -> None:
    ws = trained["ws"]
    out = ok(cli(ws, "eval", "--captions", str(trained["captions"]), "--distilled", "distilled", "--rerank", "5", "--json"))
    rows = {r["method"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"fast", "distilled", "slow", "rerank"}
    # The Fast rows recomputed here from the model folders, ranks counted independently.
    from fastslow_cli.data.captioned_set import captioned_set
    from fastslow_cli.search.retrievers import load_fast
    from fastslow_cli.store.parquet import FeatureStore

    data = captioned_set(FeatureStore(ws / "features" / "default"), trained["captions"], ("test",))
    texts, gt = [t for t, _ in data.pairs["test"]], np.array([i for _, i in data.pairs["test"]])
    for method, name in (("fast", "fast"), ("distilled", "distilled")):
        model = load_fast(ws / "models" / name, "cpu")
        scores = model.encode_texts(texts) @ model.encode_items(data.table).T
        ranks = (scores >= scores[np.arange(len(gt)), gt][:, None]).sum(1)  # ties ranked above the truth
        r = rows[method]
        assert (r["queries"], r["items"]) == (len(texts), len(data.table.ids))
        assert [r["R@1"], r["R@5"], r["R@10"]] == pytest.approx([100 * np.mean(ranks <= k) for k in (1, 5, 10)])
        assert r["mean_rank"] == pytest.approx(ranks.mean())
    # Re-ranking only reorders the distilled model's top 5 (HNSW is exact on 136 items):
    # recall at 5 and beyond is the distilled row's, whatever the Slow model says.
    rerank = rows["rerank"]
    assert (rerank["K"], rerank["fast_model"]) == (5, "distilled")
    assert (rerank["R@5"], rerank["R@10"]) == (rows["distilled"]["R@5"], rows["distilled"]["R@10"])
    assert (rows["slow"]["queries"], rows["slow"]["items"]) == (len(texts), len(data.table.ids))


class _Page(HTMLParser):
    """What the report tests read from a page: tags, attributes, table cells, the embedded rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts: dict[str, str] = {}
        self.noimg: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._script: str | None = None
        self._in_noimg = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._table:
            self._cell = []
        elif tag == "script":
            self._script = a.get("id") or ""
            self.scripts[self._script] = ""
        elif tag == "div" and a.get("class") == "noimg":
            self._in_noimg = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "script":
            self._script = None
        elif tag == "div":
            self._in_noimg = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self.scripts[self._script] += data
        if self._in_noimg:
            self.noimg.append(data.strip())


def test_eval_html_report(trained: dict[str, Path], tmp_path: Path) -> None:
    ws, report = trained["ws"], tmp_path / "out" / "report.html"
    out = ok(cli(ws, "eval", "--captions", str(trained["captions"]), "--distilled", "distilled", "--rerank", "5",
                 "--sweep", "0,5,10,500", "--html", str(report), "--json"))
    rows = [json.loads(line) for line in out.stdout.splitlines()]  # --json is unchanged by --html
    assert [r["method"] for r in rows] == ["fast", "distilled", "slow", "rerank"]
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    # Self-contained: nothing fetched from elsewhere (pictures are data URIs, links are fragments).
    links = [v for _, a in page.tags for k, v in a.items() if k in ("src", "href", "xlink:href") and v]
    assert all(v.startswith(("data:image/jpeg;base64,", "#")) for v in links), links
    assert not any(t in ("link", "iframe") or (t == "script" and a.get("src")) for t, a in page.tags)
    # Four plots of the K sweep (recall, twins, ms/query, trade-off) and the reliability diagram.
    assert sum(t == "svg" for t, _ in page.tags) == 5
    # The table is the one `eval --json` gave.
    shown = page.tables["eval-table"][1:]
    assert shown == [[r["method"] + (f" K={r['K']}" if "K" in r else ""), f"{r['R@1']:.1f}", f"{r['R@5']:.1f}",
                      f"{r['R@10']:.1f}", f"{r['median_rank']:g}", "-" if r["twin_acc"] is None else f"{r['twin_acc']:.1f}",
                      f"{r['ms_per_query']:.2f}"] for r in rows]
    assert [r["method"] for r in json.loads(page.scripts["eval-rows"])] == [r["method"] for r in rows]
    # The sweep: K capped at the split's items; its K=5 point is the rerank row (the same search path).
    sweep = page.tables["sweep-table"][1:]
    items = rows[0]["items"]
    assert [p[0] for p in sweep] == ["0", "5", "10", str(items)]
    assert sweep[1][1:4] == shown[3][1:4]
    assert sweep[0][2:4] == shown[1][2:4]  # K = 0: the distilled model's own ranking (HNSW is exact here)
    populations = [c[0] for c in page.tables["calibration-table"][1:]]
    assert populations == ["fast: all pairs", "distilled: all pairs", "slow: all pairs",
                           "search results, rerank K=5", "search results, Fast only (top 10)"]
    # Twin examples: every item shown by the thumbnail extract stored (videos too).
    assert rows[0]["twins"] > 0 and "Twin pairs won and lost" in report.read_text(encoding="utf-8")
    assert page.noimg == [] and sum(t == "img" for t, _ in page.tags) > 0
    out = cli(ws, "eval", "--captions", str(trained["captions"]), "--html", str(tmp_path), "--slow", "")
    assert out.returncode == 2 and "is a folder" in out.stderr and "Traceback" not in out.stderr
    out = cli(ws, "eval", "--captions", str(trained["captions"]), "--html", str(report), "--sweep", "5,x")
    assert out.returncode == 2 and "--sweep" in out.stderr and "Traceback" not in out.stderr


def test_models_are_calibrated_and_min_score_cuts(trained: dict[str, Path], tmp_path: Path) -> None:
    ws = trained["ws"]
    val_items = len({json.loads(line)["media"] for line in trained["captions"].read_text().splitlines()
                     if json.loads(line)["split"] == "val"})
    for name, score in (("fast", "fast_score"), ("slow", "slow_score"), ("distilled", "fast_score")):
        cal = json.loads((ws / "models" / name / "config.json").read_text())["calibration"]
        assert cal["input"] == score and cal["items"] == val_items and math.isfinite(cal["a"] + cal["b"])
    q = "a red circle left of a blue square"
    full = [json.loads(x) for x in ok(cli(ws, "search", q, "--json", "-k", "10", "--rerank", "5")).stdout.splitlines()]
    assert all(0.0 <= r["relevance"] <= 1.0 for r in full)
    cut = sorted(r["relevance"] for r in full)[5]
    kept = [json.loads(x) for x in ok(cli(ws, "search", q, "--json", "-k", "10", "--rerank", "5", "--min-score",
                                          repr(cut))).stdout.splitlines()]
    assert kept == [r for r in full if r["relevance"] >= cut] and 0 < len(kept) < 10
    table = ok(cli(ws, "search", q, "--rerank", "5", "--min-score", "1")).stdout
    assert "no result with relevance >= 1" in table or "relevance" in table
    # A model saved before calibrations: --min-score is a one-line error naming it.
    old = tmp_path / "ws"
    shutil.copytree(ws, old, ignore=shutil.ignore_patterns("demo-data*"))
    config = old / "models" / "distilled" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "calibration"}))
    out = cli(old, "search", q, "--min-score", "0.5")
    assert out.returncode == 1 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"the Fast model {old / 'models' / 'distilled'} has none" in " ".join(out.stderr.split())
    assert "fastslow calibrate distilled --captions FILE" in " ".join(out.stderr.split())
    assert ok(cli(old, "search", q, "--json")).stdout  # searching without the cut-off still works
    # `fastslow calibrate` fits what training fitted (same val subset), and the index still takes the model.
    summary = json.loads(ok(cli(old, "calibrate", "distilled", "--captions", str(trained["captions"]), "--json")).stdout)
    want = json.loads((ws / "models" / "distilled" / "config.json").read_text())["calibration"]
    assert (summary["a"], summary["b"]) == pytest.approx((want["a"], want["b"]), rel=1e-6, abs=1e-9)
    assert json.loads(config.read_text())["calibration"] == {k: summary[k] for k in want}
    again = [json.loads(x) for x in ok(cli(old, "search", q, "--json", "-k", "10", "--rerank", "5", "--min-score",
                                           repr(cut))).stdout.splitlines()]
    assert [r["id"] for r in again] == [r["id"] for r in kept]


def test_mismatched_model_refused(trained: dict[str, Path]) -> None:
    """A model retrained in place after the index was built no longer matches its hash."""
    ws = trained["ws"]
    ok(cli(ws, "index", "build", "--model", "fast", "--slow", "slow", "--name", "other"))
    manifest_path = ws / "index" / "other" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["fast"]["content_hash"] = "0" * 64  # as if models/fast had been retrained since
    manifest_path.write_text(json.dumps(manifest))
    out = cli(ws, "search", "a red circle", "--index", "other")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"the Fast model at {ws / 'models' / 'fast'} was retrained or replaced since index" in out.stderr
    assert "rebuild the index with `fastslow index build --model fast --slow slow --name other`" in out.stderr


def test_missing_things_are_one_line_errors(trained: dict[str, Path], tmp_path: Path) -> None:
    ws = trained["ws"]
    out = cli(ws, "search", "a red circle", "--index", "nope")
    assert out.returncode == 1 and "index build" in out.stderr and "Traceback" not in out.stderr
    out = cli(ws, "train", "fast", "--captions", str(tmp_path / "none.jsonl"))
    assert out.returncode == 1 and "none.jsonl" in out.stderr and "Traceback" not in out.stderr
    out = cli(ws, "index", "build", "--model", "nomodel")
    assert out.returncode == 1 and "nomodel" in out.stderr and "Traceback" not in out.stderr
    train_only = tmp_path / "train_only.jsonl"
    train_only.write_text(json.dumps({"media": str(trained["data"] / "images" / "00000.png"), "caption": "a red circle"}) + "\n")
    out = cli(ws, "eval", "--captions", str(train_only))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{train_only} has no caption of split(s) test (it has: train)" in out.stderr and "--split" in out.stderr
    not_extracted = tmp_path / "not_extracted.jsonl"
    not_extracted.write_text(json.dumps({"media": "elsewhere/x.png", "caption": "a red circle", "split": "test"}) + "\n")
    out = cli(ws, "eval", "--captions", str(not_extracted))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    message = " ".join(out.stderr.split())
    assert f"none of the 1 media path(s) of split(s) test in {not_extracted} match an item" in message
    assert f"names {os.path.realpath(tmp_path)}/elsewhere/x.png; the set has no file named 'x.png'" in message
