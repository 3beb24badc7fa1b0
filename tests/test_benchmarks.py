"""Smoke test of the benchmark scripts: each `--quick` run on tiny sizes writes the JSON the README quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastslow_cli.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION
from fastslow_cli.media.decode import AV_SEEK_MIN_FRAMES

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "bench_search.py": ["--sizes", "200", "--train-images", "40", "--train-videos", "4", "--recall-queries", "50"],
    "bench_cli.py": [],
    "bench_decode.py": ["--width", "96", "--height", "64", "--seconds", "1", "--long-seconds", str(AV_SEEK_MIN_FRAMES / 25),
                        "--frames", "4", "--extract-images", "4", "--extract-videos", "2", "--extract-copies", "1"],
    "bench_scale.py": ["--sizes", "600", "--queries", "10"],
}


def _run(script: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    proc = subprocess.run(
        [sys.executable, os.fspath(ROOT / "benchmarks" / script), "--quick", "--out", os.fspath(out), *TINY.get(script, []),
         *args],
        check=False, capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = script.removeprefix("bench_").removesuffix(".py")
    assert (out / f"{name}.md").read_text().startswith("# ")
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.slow
def test_quick_benchmarks_write_their_results(tmp_path: Path) -> None:
    search = _run("bench_search.py", tmp_path)
    assert search["quick"] is True and search["params"]["hnsw"]["ef_search"] == DEFAULT_EF
    assert "shared" in search["machine"]["shared_machine"] and search["machine"]["load_avg_at_end"]
    (size,) = search["sizes"]
    assert size["n"] == 200 and size["kinds"] == ["image", "video"]
    for key in ("text_encoding", "fast_exact", "fast_hnsw", "slow_only_image", "slow_only_video", "rerank_image_20", "rerank_video_20"):
        assert size["ms_per_query"][key] > 0
    assert size["slow_only"]["image"]["extrapolated"] is False and size["slow_only"]["video"]["extrapolated"] is True
    names = [r["name"] for r in size["references"]]
    assert any(n.startswith("fastslow HNSW") for n in names) and "hnswlib BFIndex (brute force)" in names
    if search["machine"]["faiss"] is not None:
        assert "faiss IndexFlatIP" in names and any(n.startswith("faiss IndexHNSWFlat") for n in names)
    assert all(0.0 <= r["recall@10_captions"] <= 1.0 for r in size["references"])
    trained = search["trained"]
    assert trained["items"] == 44 and trained["recall_captions"][0]["ef"] == 16
    assert {"val_R@1", "val_chance_R@1", f"top1_agreement_ef{DEFAULT_EF}"} <= trained.keys()

    decode = _run("bench_decode.py", tmp_path)
    assert [s["case"] for s in decode["settings"]] == ["short", "long"]
    assert [s["av_seek_path"] for s in decode["settings"]] == [False, True]
    assert set(decode["settings"][1]["decoders"]) == {"decord", "av", "av_every_frame"}
    assert [r["files"] for r in decode["extract"]] == ["synthetic images", "synthetic clips", "clips"]
    assert all(r["ratio_2_over_1"] > 0 and set(r["items_per_s"]) == {"1", "2"} for r in decode["extract"])

    scale = _run("bench_scale.py", tmp_path)
    assert [(r["n"], r["shards"]) for r in scale["rows"]] == [(600, 1), (600, 4)]
    assert scale["params"]["memory_dtype"] == "int8" and scale["params"]["ef_construction"] == DEFAULT_EF_CONSTRUCTION
    for row in scale["rows"]:
        assert row["p50_ms_fast_rerank20"] > row["p50_ms_fast"] > 0 and row["build_peak_rss_mb"] > 0
        assert abs(row["memory_bytes_per_item"] - scale["params"]["memory_bytes_per_item_expected"]) < 1  # + .npy header
        assert row["recall@10_vs_numpy"] == 1.0  # 600 items at ef 256: exhaustive
        if row["faiss"] is not None:
            assert row["numpy_vs_faiss_flat_recall@10"] == 1.0


@pytest.mark.slow
def test_quick_cli_benchmark_writes_its_results(tmp_path: Path) -> None:
    cli = _run("bench_cli.py", tmp_path)
    assert cli["quick"] is True and cli["runs"] == 1 and cli["index"]["count"] == 60
    assert cli["onnx_search_heavy_imports"] == []  # the ONNX one-shot search imported no torch, no pandas
    for what in ("search", "search --rerank 20"):
        for engine in ("onnx", "torch"):
            assert cli["seconds_median"][f"{what}, {engine}"] > 0
        assert cli["torch_over_onnx"][what] > 0
    assert set(cli["import_seconds"]) >= {"torch", "onnxruntime", "pyarrow", "pandas"}
    assert "shared" in cli["machine"]["shared_machine"] and cli["machine"]["load_avg_at_end"]


@pytest.mark.slow
def test_quick_thumbnail_benchmark_writes_its_results(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    proc = subprocess.run(
        [sys.executable, os.fspath(ROOT / "benchmarks" / "bench_thumbs.py"), "--quick", "--out", os.fspath(tmp_path),
         "--images", "4", "--videos", "2"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "thumbs.json").read_text())
    assert [r["files"] for r in report["rows"]] == ["synthetic images", "synthetic videos"]
    images, videos = report["rows"]
    assert images["thumbnails"]["files"] == 4 and videos["thumbnails"]["files"] == 2 * report["params"]["frames_per_video"]
    assert all(r["ratio_with_over_without"] > 0 and r["thumbnails"]["bytes_per_item"] > 0 for r in report["rows"])
    assert (tmp_path / "thumbs.md").read_text().startswith("# ")


@pytest.mark.slow
def test_quick_serve_benchmark_loads_the_real_server(tmp_path: Path, served_workspace: Path) -> None:
    serve = _run("bench_serve.py", tmp_path, "-w", os.fspath(served_workspace), "--rerank", "5")
    assert serve["quick"] is True and serve["errors"] == 0 and "shared" in serve["machine"]["shared_machine"]
    assert serve["params"]["items"] == 15
    rows = [(r["rerank"], r["concurrency"], r["requests"]) for r in serve["rows"]]
    assert rows == [(0, 1, 40), (0, 4, 40), (5, 1, 40), (5, 4, 40)]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["qps"] > 0 and 0 < r["rss_kib_after"]["anon"] < r["rss_kib_after"]["rss"]
               for r in serve["rows"])
    assert set(serve["rss_kib"]) == {"after_start", "after_warmup", "at_end"}


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # it starts Ray (in its build processes): not beside the other Ray tests
def test_quick_encode_benchmark_compares_the_engines(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    proc = subprocess.run(
        [sys.executable, os.fspath(ROOT / "benchmarks" / "bench_scale.py"), "--encode", "--quick", "--encode-items", "40",
         "--out", os.fspath(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "encode.json").read_text())
    assert report["params"]["items"] == 40 and report["machine"]["load_avg_at_end"]
    assert [(r["engine"], r["workers"], r["cores"]) for r in report["rows"]] == [
        ("local", None, report["machine"]["cpus"]), ("local", None, 1), ("ray", 1, report["machine"]["cpus"]),
        ("ray", 2, report["machine"]["cpus"]),
    ]
    assert all(r["items_per_s_build"] >= r["items_per_s_wall"] > 0 and r["stderr_lines_besides_progress"] == 0
               for r in report["rows"])
    assert (tmp_path / "encode.md").read_text().startswith("# Item encoding")
