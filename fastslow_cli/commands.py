"""Glue between the CLI and the core for the model-using commands: resolve names to
folders, load models once, show progress, render summaries. Imports torch; the CLI
imports this module only when such a command runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastslow_cli.cli.console import RateColumn, err_console, make_progress
from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.workspace import Workspace, resolve_workspace


def model_path(ws: Workspace, name: str) -> str:
    """A model argument: a name under WORKSPACE/models, else a folder, else (HF) a hub id."""
    if "/" not in name and "\\" not in name and not name.startswith("."):
        candidate = ws.root / "models" / name
        if candidate.exists():
            return str(candidate)
        if not Path(name).exists():
            raise FastslowError(
                f"no model '{name}' in {ws.root / 'models'}: train it (`fastslow train ...`) or pass a model folder"
            )
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def default_slow(ws: Workspace) -> str | None:
    """The Slow model used when none is named: WORKSPACE/models/slow if it was trained."""
    path = ws.root / "models" / "slow"
    return str(path) if path.exists() else None


def build_index_command(
    workspace: Any, set_name: str, model: str, slow: str | None, name: str, m: int, ef_construction: int, ef: int, device: str
) -> dict[str, Any]:
    from fastslow_cli.index.hnsw import AnnParams
    from fastslow_cli.index.folder import build_index
    from fastslow_cli.search.retrievers import load_fast, load_slow
    from fastslow_cli.store.parquet import FeatureStore

    ws = resolve_workspace(workspace)
    store = FeatureStore(ws.features_dir(set_name))
    store.manifest()  # a clear error when the set does not exist
    fast_model = load_fast(model_path(ws, model), device)
    slow_name = slow if slow is not None else default_slow(ws)
    slow_model = load_slow(model_path(ws, slow_name), device) if slow_name else None
    _check_fingerprint(store, fast_model.identity, "Fast")
    if slow_model is not None:
        _check_fingerprint(store, slow_model.identity, "Slow")
    total = len(store.entries())
    with make_progress(RateColumn("items")) as bar:
        task = bar.add_task(f"index {name}", total=total)
        report = build_index(
            store,
            ws.index_dir(name),
            fast_model,
            slow_model,
            AnnParams(M=m, ef_construction=ef_construction, ef_search=ef),
            progress=lambda n: bar.advance(task, n),
        )
    err_console.print(
        f"index '{name}': {report.items} items in {report.seconds:.1f} s"
        + (f", {report.skipped_missing} left out (media file gone)" if report.skipped_missing else "")
        + ("" if slow_model else "; no Slow model: search without --rerank only"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return {"index": name, "items": report.items, "skipped_missing": report.skipped_missing, "seconds": round(report.seconds, 3)}


def _check_fingerprint(store: Any, identity: dict[str, Any], what: str) -> None:
    need = identity.get("fingerprint")
    if need and need != store.fingerprint():
        raise FastslowError(
            f"the {what} model {identity.get('path')} was trained on other features than {store.directory}: "
            "use the feature set it was trained on (--set) or retrain it"
        )


def _stored_models(manifest: dict[str, Any], device: str, need_slow: bool = True) -> tuple[Any, Any]:
    """The models an index was built with (their content hashes are checked by the index)."""
    from fastslow_cli.search.retrievers import load_fast, load_slow

    fast = load_fast(manifest["fast"]["path"], device)
    slow = load_slow(manifest["slow"]["path"], device) if need_slow and manifest.get("slow") else None
    return fast, slow


def add_index_command(workspace: Any, set_name: str, name: str, device: str) -> dict[str, Any]:
    from fastslow_cli.index.folder import SearchIndex, add_to_index
    from fastslow_cli.store.parquet import FeatureStore

    ws = resolve_workspace(workspace)
    directory = ws.index_dir(name)
    manifest = SearchIndex.open(directory).manifest
    fast, slow = _stored_models(manifest, device)
    report = add_to_index(FeatureStore(ws.features_dir(set_name)), directory, fast, slow)
    err_console.print(f"index '{name}': added {report.items} new item(s)", markup=False, highlight=False)
    return {"index": name, "added": report.items, "seconds": round(report.seconds, 3)}


def index_info_command(workspace: Any, name: str) -> dict[str, Any]:
    from fastslow_cli.index.folder import read_manifest

    ws = resolve_workspace(workspace)
    return read_manifest(ws.index_dir(name))


def read_queries(queries: list[str]) -> Iterator[str]:
    """The queries of the command line; `-` reads one per line from stdin (blank lines skipped)."""
    for q in queries:
        if q == "-":
            for line in sys.stdin:
                if line.strip():
                    yield line.rstrip("\n")
        else:
            yield q


def search_command(
    workspace: Any, queries: list[str], k: int, rerank: int, alpha: float | None, ef: int | None, index_name: str, device: str
) -> Iterator[list[Any]]:
    """Load once, answer each query in turn (streaming: results of a stdin query print at once)."""
    from fastslow_cli.index.folder import SearchIndex
    from fastslow_cli.search.searcher import Searcher

    if not queries:
        raise UsageError("no query given: `fastslow search \"a red car\"`, or `-` to read queries from stdin")
    ws = resolve_workspace(workspace)
    index = SearchIndex.open(ws.index_dir(index_name))
    fast, slow = _stored_models(index.manifest, device, need_slow=rerank > 0)
    if rerank and slow is None:
        raise UsageError(f"index '{index_name}' has no Slow model: rebuild it with `fastslow index build --slow MODEL`")
    searcher = Searcher(index, fast, slow)
    skipped = 0
    for query in read_queries(queries):
        try:
            yield searcher.search(query, k=k, rerank=rerank, alpha=alpha, ef=ef)
        except UsageError as exc:  # one odd query in a batch does not stop the others
            if queries != ["-"]:
                raise
            skipped += 1
            err_console.print(f"skipped query: {exc}", markup=False, highlight=False, soft_wrap=True)
    if skipped:
        raise FastslowError(f"{skipped} quer{'y' if skipped == 1 else 'ies'} from stdin could not be searched (see above)")


def train_command(
    kind: str,
    workspace: Any,
    captions: Path,
    set_name: str,
    out: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """Train a Fast or Slow model on the train split, select on val, save the best checkpoint."""
    from fastslow_cli.training.loop import (
        SlowTrainArgs,
        TrainArgs,
        fit_batch,
        train_fast,
        train_slow,
    )

    ws, dev, store, data = _training_data(workspace, set_name, captions, device)
    args = _with_overrides(SlowTrainArgs() if kind == "slow" else TrainArgs(), epochs, batch_size, lr, seed)
    name = out or kind
    model_dir = ws.model_dir(name)
    batch = fit_batch(args, len({item for _, item in data.pairs["train"]})).batch_size
    err_console.print(
        f"train {kind}: {len(data.pairs['train'])} train / {len(data.pairs['val'])} val captions, "
        f"{len(data.table.ids)} items, {args.epochs} epochs, batch {batch}, device {dev}",
        markup=False,
        highlight=False,
    )
    trainer = train_slow if kind == "slow" else train_fast
    with _TrainProgress(f"train {kind}") as progress:
        result = trainer(data.table, data.pairs["train"], data.pairs["val"], args=args, callback=progress.event, device=dev)
    training = {**result.args.to_dict(), "captions": str(captions)}
    return _save_trained(model_dir, result, {"fingerprint": data.fingerprint, "set": set_name}, training, kind)


def _save_trained(model_dir: Path, result: Any, features: dict[str, Any], training: dict[str, Any], kind: str) -> dict[str, Any]:
    """Checkpoint + `train_log.jsonl` (one record per epoch), and the summary of the best epoch."""
    from fastslow_cli.atomic import atomic_write_text
    from fastslow_cli.models.checkpoint import save_model

    save_model(model_dir, result.model, result.tokenizer, features, training=training, extra={"best": result.best})
    atomic_write_text(model_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
    best = result.best
    err_console.print(
        f"saved {model_dir}: best epoch {best.get('epoch')} with val R@1 {best.get('val_R@1', float('nan')):.1f}",
        markup=False,
        highlight=False,
    )
    summary = {k: v for k, v in best.items() if k != "best"}
    return {"model": model_dir.name, "path": str(model_dir), "kind": kind, **summary}


def _training_data(workspace: Any, set_name: str, captions: Path, device: str) -> tuple[Workspace, Any, Any, Any]:
    """Workspace, torch device, feature store and the train + val captions matched to it."""
    from fastslow_cli.data.captioned_set import captioned_set, hold_out_val
    from fastslow_cli.runtime import setup_torch
    from fastslow_cli.store.parquet import FeatureStore

    ws = resolve_workspace(workspace)
    dev = setup_torch(device)
    store = FeatureStore(ws.features_dir(set_name))
    data = hold_out_val(captioned_set(store, captions, ("train", "val")), captions)
    _print_notes(data)
    return ws, dev, store, data


def _with_overrides(args: Any, epochs: int | None, batch_size: int | None, lr: float | None, seed: int) -> Any:
    """The defaults of `args` with what the user set on the command line."""
    from dataclasses import replace

    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    if batch_size is not None:
        overrides["min_steps"] = 0  # a batch size the user asked for is used as is
    return replace(args, seed=seed, **overrides)


def _print_notes(data: Any) -> None:
    for note in data.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if data.unmatched:
        err_console.print(
            f"warning: {data.unmatched} caption(s) name media that is not in the feature set "
            f"(e.g. {data.unmatched_example}); extract it to use them",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


class _TrainProgress:
    """A rich bar over training steps with the running loss; one line per epoch with val metrics."""

    def __init__(self, title: str) -> None:
        from rich.progress import TextColumn

        self.bar = make_progress(TextColumn("loss {task.fields[loss]}"))
        self.title = title
        self.task: Any = None

    def __enter__(self) -> _TrainProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def event(self, e: dict[str, Any]) -> None:
        if e["event"] == "step":
            if self.task is None:
                self.task = self.bar.add_task(self.title, total=e["total_steps"], loss="")
            self.bar.update(self.task, completed=e["step"], loss=f"{e['loss']:.3f}")
        elif e["event"] == "epoch":
            twin, loss, r1 = e.get("val_twin_acc"), e.get("loss"), e.get("val_R@1")
            self.bar.console.print(
                f"epoch {e['epoch']}: "
                + ("" if loss is None or loss != loss else f"loss {loss:.3f}  ")
                + ("(not validated yet)" if r1 is None else f"val R@1 {r1:.1f}  R@5 {e['val_R@5']:.1f}")
                + (f"  twins {twin:.1f}" if twin is not None else "")
                + ("  *best" if e.get("best") else ""),
                markup=False,
                highlight=False,
            )


def eval_command(
    workspace: Any,
    captions: Path,
    split: str,
    set_name: str,
    fast: str | None,
    slow: str | None,
    distilled: str | None,
    rerank: int,
    alpha: float | None,
    device: str,
    max_queries: int | None = None,
) -> list[dict[str, Any]]:
    """Load what was asked for and measure every method on the split."""
    from fastslow_cli.data.captioned_set import captioned_set
    from fastslow_cli.eval.runs import run_eval
    from fastslow_cli.search.retrievers import load_fast, load_slow
    from fastslow_cli.store.parquet import FeatureStore

    ws = resolve_workspace(workspace)
    store = FeatureStore(ws.features_dir(set_name))
    data = captioned_set(store, captions, (split,))
    _print_notes(data)
    fast_model = load_fast(model_path(ws, fast), device) if fast else None
    slow_model = load_slow(model_path(ws, slow), device) if slow else None
    distilled_model = load_fast(model_path(ws, distilled), device) if distilled else None
    for m, what in ((fast_model, "Fast"), (slow_model, "Slow"), (distilled_model, "distilled")):
        if m is not None:
            _check_fingerprint(store, m.identity, what)
    if rerank and slow_model is None:
        raise UsageError("--rerank needs a Slow model: pass --slow NAME")
    queries = len(data.pairs[split]) if max_queries is None else min(max_queries, len(data.pairs[split]))
    err_console.print(
        f"eval on split '{split}': {queries} captions, {len(data.table.ids)} items",
        markup=False,
        highlight=False,
    )
    with err_console.status("evaluating") as status:
        return run_eval(
            store, data, split, fast_model, slow_model, distilled_model, rerank, alpha,
            status=lambda m: status.update(f"evaluating {m}"), max_queries=max_queries,
        )


def distill_command(
    workspace: Any,
    captions: Path,
    set_name: str,
    teacher: str,
    student: str,
    out: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """Distil a trained Slow teacher into a trained Fast student; saved as a normal Fast model."""
    from fastslow_cli.training.distill import DistillArgs, distill
    from fastslow_cli.models.checkpoint import load_model

    ws, dev, store, data = _training_data(workspace, set_name, captions, device)
    teacher_dir, student_dir = model_path(ws, teacher), model_path(ws, student)
    fingerprint = store.fingerprint()
    t = load_model(teacher_dir, kind="slow", fingerprint=fingerprint)
    s = load_model(student_dir, kind="fast", fingerprint=fingerprint)
    args = _with_overrides(DistillArgs(), epochs, batch_size, lr, seed)
    name = out or f"{Path(student_dir).name}-distilled"
    err_console.print(
        f"distill {Path(teacher_dir).name} -> {Path(student_dir).name}: {len(data.pairs['train'])} train captions, "
        f"{len(data.table.ids)} items, device {dev}",
        markup=False,
        highlight=False,
    )
    with _TrainProgress("distill") as progress:
        result = distill(
            data.table, data.pairs["train"], data.pairs["val"], t.model, t.tokenizer, s.model, s.tokenizer,
            args=args, callback=progress.event, device=dev,
        )
    training = {**result.args.to_dict(), "captions": str(captions), "teacher": str(teacher_dir), "student": str(student_dir)}
    return _save_trained(ws.model_dir(name), result, {"fingerprint": fingerprint, "set": set_name}, training, "fast")
