"""The public Python API: a `Workspace` is one `.fastslow` folder and every pipeline step on it.

```python
import fastslow_cli as fs
ws = fs.Workspace("~/.fastslow")            # or fs.Workspace(): $FASTSLOW_WORKSPACE, else ./.fastslow
ws.extract(["~/media"])                      # -> ExtractSummary
ws.train("fast", captions="captions.jsonl")  # and "slow"; ws.distill(...)
ws.build_index(model="fast", slow="slow")    # ws.update_index()
hits = ws.searcher().search("a dog catching a frisbee", k=10, rerank=20)
```

The CLI (`cli/app.py`) is a thin layer over these methods. Nothing here prints, draws or
sets global torch state: long steps report through an optional `progress` callback that
receives dict events (see docs/ARCHITECTURE.md, "Events"), and user-fixable problems
raise `FastslowError` / `UsageError` with one-line messages. This module imports only
the standard library at import time; each method imports the stage it runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.media.location import is_url
from fastslow_cli.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M

if TYPE_CHECKING:
    from fastslow_cli.data.captioned_set import CaptionedSet, CaptionsPaths
    from fastslow_cli.features.extract import ExtractSummary
    from fastslow_cli.index.folder import Encoder, SearchIndex
    from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever
    from fastslow_cli.search.searcher import Searcher
    from fastslow_cli.store.parquet import FeatureStore

ENV_VAR = "FASTSLOW_WORKSPACE"
DEFAULT_DIR = ".fastslow"
CONFIG = "workspace.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Progress = Callable[[dict[str, Any]], None]


def check_name(name: str, what: str) -> str:
    """Names of sets, models and indexes become folder names: keep them plain."""
    if not _NAME.match(name):
        raise UsageError(f"invalid {what} name {name!r}: use letters, digits, '.', '_' or '-' (e.g. 'default')")
    return name


def _emit(progress: Progress | None, event: str, **fields: Any) -> None:
    if progress is not None:
        progress({"event": event, **fields})


@dataclass
class TrainSummary:
    """What `train` and `distill` saved: the model folder and its best epoch's record."""

    model: str
    path: str
    kind: str
    best: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "path": self.path, "kind": self.kind, **self.best}


@dataclass
class IndexSummary:
    """What `build_index` / `update_index` did to an index."""

    index: str
    items: int
    added: int
    seconds: float
    skipped_missing: int = 0
    has_slow: bool = True
    updated: int = 0  # an update: items re-encoded because their file changed
    removed: int = 0  # an update: items dropped because their file is gone

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "items": self.items,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "skipped_missing": self.skipped_missing,
            "seconds": round(self.seconds, 3),
        }


class Workspace:
    """One workspace folder (DESIGN.md, "Workspace layout") and the pipeline steps on it."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        raw = root if root not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_DIR
        if is_url(raw):
            raise UsageError(
                f"workspace {os.fspath(raw)}: a workspace is a folder, not a URL (its feature sets and indexes need "
                "file locks and atomic renames): pass a local or mounted folder; media may be URLs (docs/SCALE.md)"
            )
        path = Path(raw).expanduser()
        if path.exists() and not path.is_dir():
            raise UsageError(f"workspace {path} is a file, not a folder: pass --workspace DIR")
        self.root = path.resolve()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ---- layout ---------------------------------------------------------------------
    def features_dir(self, set_name: str) -> Path:
        return self.root / "features" / check_name(set_name, "feature set")

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / check_name(name, "model")

    def index_dir(self, name: str) -> Path:
        return self.root / "index" / check_name(name, "index")

    def store(self, set_name: str = "default", progress: Progress | None = None) -> FeatureStore:
        """The feature set `set_name` (it need not exist yet); `progress` hears its notes
        (e.g. an old set upgraded on first open)."""
        from fastslow_cli.store.parquet import FeatureStore

        return FeatureStore(self.features_dir(set_name), notify=progress)

    def indexes(self) -> list[str]:
        """Names of the built indexes, sorted."""
        folder = self.root / "index"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists())

    def _config(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise FastslowError(f"cannot read {self.root / CONFIG} ({exc}): delete it (it only records the default index)") from exc
        return data if isinstance(data, dict) else {}

    def set_default_index(self, name: str) -> None:
        """Record the index `search` uses when none is named (the demo records its own)."""
        from fastslow_cli.atomic import atomic_write_json

        atomic_write_json(self.root / CONFIG, {**self._config(), "default_index": check_name(name, "index")})

    def default_index(self) -> str:
        """The index used when none is named: 'default' if built, else the recorded one,
        else the only one there is."""
        built = self.indexes()
        if "default" in built:
            return "default"
        recorded = self._config().get("default_index")
        if isinstance(recorded, str) and recorded in built:
            return recorded
        if len(built) == 1:
            return built[0]
        if not built:
            raise FastslowError(
                f"no index in {self.root / 'index'}: build one with `fastslow index build` (or run `fastslow demo`)"
            )
        raise UsageError(f"{len(built)} indexes in {self.root / 'index'} ({', '.join(built)}): choose one with --index NAME")

    def resolve_model(self, name: str) -> str:
        """A model argument: a name under WORKSPACE/models, else a folder, else (HF) a hub id."""
        from fastslow_cli.models.names import resolve_model

        return resolve_model(name, self.root / "models").path_or_id

    def _default_slow(self) -> str | None:
        return "slow" if (self.root / "models" / "slow").exists() else None

    # ---- extract ----------------------------------------------------------------------
    def extract(
        self,
        paths: Sequence[str | os.PathLike[str]],
        set: str = "default",  # noqa: A002 - the CLI's --set
        *,
        backbone: str = "pixels",
        frames: int = 8,
        size: int | None = None,
        batch_size: int = 64,
        decoder: str = "auto",
        workers: int = 2,
        timeout: float = 120.0,
        device: str = "auto",
        thumbnails: bool = True,
        engine: str = "local",
        address: str | None = None,
        gpus_per_worker: float = 0.0,
        publish: str | None = None,
        progress: Progress | None = None,
    ) -> ExtractSummary:
        """Decode the media under `paths`, run the backbone, store the features (resumable)
        and, with `thumbnails`, a small JPEG per image and sampled frame (store/thumbs.py).
        `engine="ray"` decodes on Ray Data actors (`address`: local, auto or ray://HOST:PORT;
        `workers` actors, `gpus_per_worker` GPUs each); the feature set is the same. `publish`:
        a URL to copy the set's Parquet dataset to afterwards (store/published.py)."""
        from fastslow_cli.features.extract import ExtractOptions, run_extract

        options = ExtractOptions(
            set_name=set, backbone=backbone, frames=frames, size=size, batch_size=batch_size,
            decoder=decoder, workers=workers, timeout=timeout, device=device, thumbnails=thumbnails,
            engine=engine, address=address, gpus_per_worker=gpus_per_worker, publish=publish,
        )
        return run_extract([os.fspath(p) for p in paths], self, options, progress=progress)

    # ---- training ---------------------------------------------------------------------
    def _training_data(
        self, set_name: str, captions: CaptionsPaths, media_root: str | os.PathLike[str] | None, progress: Progress | None
    ) -> CaptionedSet:
        from fastslow_cli.data.captioned_set import captioned_set, hold_out_val

        data = hold_out_val(captioned_set(self.store(set_name, progress), captions, ("train", "val"), media_root), captions)
        _report_matching(data, progress)
        return data

    def train(
        self,
        kind: str,
        captions: CaptionsPaths,
        *,
        set: str = "default",  # noqa: A002
        out: str | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int = 0,
        media_root: str | os.PathLike[str] | None = None,
        device: str = "auto",
        progress: Progress | None = None,
    ) -> TrainSummary:
        """Train a Fast or Slow model on the train split; keep the best epoch on val.

        `captions` is one captions file or several (combined); `media_root` is the folder
        their media paths are relative to when it is not the captions file's.
        """
        from fastslow_cli.atomic import check_writable
        from fastslow_cli.runtime import resolve_device
        from fastslow_cli.training.fast import train_fast
        from fastslow_cli.training.loop import SlowTrainArgs, TrainArgs, fit_batch
        from fastslow_cli.training.slow import train_slow

        if kind not in ("fast", "slow"):
            raise UsageError(f"unknown model kind {kind!r}: train 'fast' or 'slow'")
        model_dir = self.model_dir(out or kind)
        check_writable(model_dir)  # before training, not when saving its result
        dev = resolve_device(device)
        data = self._training_data(set, captions, media_root, progress)
        args = _with_overrides(SlowTrainArgs() if kind == "slow" else TrainArgs(), epochs, batch_size, lr, seed)
        batch = fit_batch(args, len({item for _, item in data.pairs["train"]})).batch_size
        _emit(
            progress, "info",
            message=f"train {kind}: {len(data.pairs['train'])} train / {len(data.pairs['val'])} val captions, "
            f"{len(data.table.ids)} items, {args.epochs} epochs, batch {batch}, device {dev}",
        )
        trainer = train_slow if kind == "slow" else train_fast
        result = trainer(data.table, data.pairs["train"], data.pairs["val"], args=args, callback=progress, device=dev)
        training = {**result.args.to_dict(), **data.provenance()}
        return _save_trained(model_dir, result, {"fingerprint": data.fingerprint, "set": set}, training, kind, progress)

    def distill(
        self,
        captions: CaptionsPaths,
        *,
        teacher: str = "slow",
        student: str = "fast",
        out: str | None = None,
        set: str = "default",  # noqa: A002
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int = 0,
        media_root: str | os.PathLike[str] | None = None,
        device: str = "auto",
        progress: Progress | None = None,
    ) -> TrainSummary:
        """Distil a trained Slow teacher into a trained Fast student (saved as a Fast model)."""
        from fastslow_cli.atomic import check_writable
        from fastslow_cli.models.checkpoint import load_model
        from fastslow_cli.runtime import resolve_device
        from fastslow_cli.training.distill import DistillArgs, distill

        dev = resolve_device(device)
        teacher_dir, student_dir = self.resolve_model(teacher), self.resolve_model(student)
        model_dir = self.model_dir(out or f"{Path(student_dir).name}-distilled")
        check_writable(model_dir)  # before distilling, not when saving its result
        data = self._training_data(set, captions, media_root, progress)
        t = load_model(teacher_dir, kind="slow", fingerprint=data.fingerprint)
        s = load_model(student_dir, kind="fast", fingerprint=data.fingerprint)
        args = _with_overrides(DistillArgs(), epochs, batch_size, lr, seed)
        _emit(
            progress, "info",
            message=f"distill {Path(teacher_dir).name} -> {Path(student_dir).name}: {len(data.pairs['train'])} train "
            f"captions, {len(data.table.ids)} items, device {dev}",
        )
        result = distill(
            data.table, data.pairs["train"], data.pairs["val"], t.model, t.tokenizer, s.model, s.tokenizer,
            args=args, callback=progress, device=dev,
        )
        training = {**result.args.to_dict(), **data.provenance(), "teacher": str(teacher_dir), "student": str(student_dir)}
        return _save_trained(model_dir, result, {"fingerprint": data.fingerprint, "set": set}, training, "fast", progress)

    def calibrate(
        self,
        model: str,
        captions: CaptionsPaths,
        *,
        set: str = "default",  # noqa: A002
        media_root: str | os.PathLike[str] | None = None,
        device: str = "auto",
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Fit (or refit) a trained model's relevance calibration on the val split and store it in
        its `config.json`, as training does (same val subset: the `val_items`, `val_texts` and
        `seed` it was trained with). For models saved before training fitted one. The weights,
        and so the model's content hash and the indexes built with it, are unchanged."""
        from fastslow_cli.atomic import atomic_write_json, check_writable
        from fastslow_cli.models.checkpoint import CONFIG, load_model
        from fastslow_cli.runtime import resolve_device
        from fastslow_cli.training.loop import SlowTrainArgs, TrainArgs, ValSet, validator

        folder = Path(self.resolve_model(model))
        check_writable(folder)
        data = self._training_data(set, captions, media_root, progress)
        loaded = load_model(folder, fingerprint=data.fingerprint)
        trained = loaded.config.get("training", {})
        defaults = SlowTrainArgs() if loaded.kind == "slow" else TrainArgs()
        val = ValSet(data.pairs["val"], int(trained.get("val_items", defaults.val_items)),
                     int(trained.get("val_texts", defaults.val_texts)), int(trained.get("seed", 0)))
        dev = resolve_device(device)
        _emit(progress, "info", message=f"calibrate {folder.name}: {len(val.texts)} val captions x {len(val.items)} items")
        calibration = validator(loaded.model.to(dev), loaded.tokenizer, data.table, val, dev).calibrate()
        if calibration is None:
            raise FastslowError(f"the val split of {captions} has fewer than 2 items: a calibration needs more")
        atomic_write_json(folder / CONFIG, {**loaded.config, "calibration": calibration.to_json()})
        _emit(progress, "info", message=f"saved the calibration in {folder / CONFIG}")
        return {"model": folder.name, "path": str(folder), **calibration.to_json()}

    # ---- models -----------------------------------------------------------------------
    def load_fast(self, name: str, device: str = "auto") -> FastRetriever:
        """A Fast retriever by name (WORKSPACE/models), folder or Hugging Face CLIP id."""
        from fastslow_cli.search.retrievers import load_fast

        return load_fast(self.resolve_model(name), device)

    def load_slow(self, name: str, device: str = "auto") -> SlowRetriever:
        """A Slow retriever by name (WORKSPACE/models), folder or Hugging Face BLIP ITM id."""
        from fastslow_cli.search.retrievers import load_slow

        return load_slow(self.resolve_model(name), device)

    def _index_models(self, index: SearchIndex, device: str, need_slow: bool) -> tuple[FastRetriever, SlowRetriever | None]:
        """The models an index was built with, from the index's own workspace (their content
        hashes are checked by the index), so a copied workspace never loads the original's."""
        from fastslow_cli.search.retrievers import load_fast, load_slow

        fast = load_fast(index.model_location("fast"), device)
        slow_path = index.model_location("slow") if need_slow else None
        return fast, load_slow(slow_path, device) if slow_path else None

    def export_models(self, names: Sequence[str], progress: Progress | None = None) -> list[dict[str, Any]]:
        """Write (again) the ONNX query graph of each native model named, even when
        FASTSLOW_ONNX_EXPORT=0: asking by name is asking for it. One record per model."""
        from fastslow_cli.models.files import is_native

        out = []
        for name in names:
            path = self.resolve_model(name)
            if not is_native(path):
                raise UsageError(f"{name} is not a native fastslow model: only those have ONNX graphs (Hugging Face models run on torch)")
            out.append(_export_graph(Path(path), progress))
        return out

    # ---- index ------------------------------------------------------------------------
    def build_index(
        self,
        model: str = "fast",
        slow: str | None = None,
        *,
        set: str = "default",  # noqa: A002
        name: str = "default",
        M: int = DEFAULT_M,  # noqa: N803 - hnswlib's name
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef: int = DEFAULT_EF,
        device: str = "auto",
        progress: Progress | None = None,
        memory: str | None = None,
        shards: int = 1,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        features_url: str | None = None,
    ) -> IndexSummary:
        """Encode every stored item with the Fast model (+ Slow memory) and write the HNSW index.

        `slow` None uses WORKSPACE/models/slow when it was trained; '' builds without one.
        `memory` is how the Slow memory is stored ("f16" or "int8", default int8: index/memory.py);
        `shards` > 1 writes a sharded index (index/shards.py). `engine` "ray" encodes the items
        on `workers` Ray actors (default 2) with `gpus_per_worker` GPUs each, on the Ray
        `address` reaches (default: a private local Ray; index/encode_ray.py); with `features_url`
        the actors read the set's published copy there (`extract --publish`), not its folder.
        """
        from fastslow_cli.atomic import check_writable
        from fastslow_cli.index.folder import build_index
        from fastslow_cli.index.hnsw import AnnParams
        from fastslow_cli.index.memory import DEFAULT_DTYPE, check_dtype
        from fastslow_cli.index.shards import build_sharded_index, check_shards

        memory = check_dtype(memory or DEFAULT_DTYPE)
        check_shards(shards)
        encoder = _index_encoder(engine, address, workers, gpus_per_worker, features_url)
        store = self.store(set, progress)
        store.manifest()  # a clear error when the set does not exist
        directory = self.index_dir(name)
        check_writable(directory)  # before loading models (build_index checks again, for other callers)
        params = AnnParams(M=M, ef_construction=ef_construction, ef_search=ef)
        fast_model = self.load_fast(model, device)
        slow_name = self._default_slow() if slow is None else (slow or None)
        slow_model = self.load_slow(slow_name, device) if slow_name else None
        fingerprint = store.fingerprint()
        for m, what in ((fast_model, "Fast"), (slow_model, "Slow")):
            if m is not None:
                _check_fingerprint(store, fingerprint, m.identity, what)
        _export_missing_graphs([m for m in (fast_model, slow_model) if m is not None], progress)
        _emit(progress, "start", stage=f"index {name}", total=len(store.entries()))
        advance = lambda n: _emit(progress, "advance", stage=f"index {name}", n=n)  # noqa: E731
        if shards > 1:
            report = build_sharded_index(store, directory, fast_model, slow_model, shards, params, advance, memory, encoder)
        else:
            report = build_index(
                store, directory, fast_model, slow_model, params, progress=advance, memory_dtype=memory, encoder=encoder
            )
        return IndexSummary(name, report.items, report.items, report.seconds, report.skipped_missing, slow_model is not None)

    def update_index(self, name: str | None = None, *, set: str | None = None, device: str = "auto",  # noqa: A002
                     progress: Progress | None = None, engine: str = "local", address: str | None = None,
                     workers: int | None = None, gpus_per_worker: float | None = None,
                     features_url: str | None = None) -> IndexSummary:
        """Bring an index in line with its feature set (default: the one it was built from):
        new items added, changed ones re-encoded, deleted ones removed; the rest is copied.
        `engine` and the Ray options as for `build_index`."""
        from fastslow_cli.atomic import check_writable
        from fastslow_cli.index.folder import SearchIndex, update_index
        from fastslow_cli.store.parquet import FeatureStore

        encoder = _index_encoder(engine, address, workers, gpus_per_worker, features_url)
        name = name or self.default_index()
        directory = self.index_dir(name)
        index = SearchIndex.open(directory)
        check_writable(directory)  # before loading models (update_index checks again, for other callers)
        fast, slow = self._index_models(index, device, need_slow=True)
        _export_missing_graphs([m for m in (fast, slow) if m is not None], progress)
        store = self.store(set, progress) if set else FeatureStore(index.feature_set_dir, notify=progress)
        store.manifest()  # a clear error when the set does not exist
        _emit(progress, "start", stage=f"index {name}", total=len(store.entries()))
        report = update_index(
            store, directory, fast, slow, progress=lambda n: _emit(progress, "advance", stage=f"index {name}", n=n),
            encoder=encoder,
        )
        if not (report.added or report.updated or report.removed):
            _emit(progress, "drop", stage=f"index {name}")  # nothing was written: no bar stuck at 0
        _index_thumbnails(store, progress)
        return IndexSummary(
            name, report.items, report.added, report.seconds, 0, slow is not None, report.updated, report.removed
        )

    def index_info(self, name: str | None = None) -> dict[str, Any]:
        """An index's manifest (models, feature set, counts, HNSW parameters, shards) and its
        `footprint`: disk and RAM in total and per item."""
        from fastslow_cli.index.folder import read_manifest
        from fastslow_cli.index.shards import footprint

        directory = self.index_dir(name or self.default_index())
        manifest = read_manifest(directory)
        return {**manifest, "footprint": footprint(directory, manifest)}

    # ---- search -----------------------------------------------------------------------
    def searcher(
        self,
        index: str | None = None,
        *,
        rerank: bool = True,
        device: str = "auto",
        engine: str = "auto",
        progress: Progress | None = None,
    ) -> Searcher:
        """A `Searcher` over an index: its models and item table are loaded once.

        `rerank=False` skips loading the Slow model (searches then cannot re-rank).
        `engine` is auto, onnx or torch (`search/loading.py`): auto runs native models on
        ONNX Runtime without importing torch when their graphs are there, else on torch,
        and then says why in a `note` event. `Searcher.engine` tells which ran.
        """
        from fastslow_cli.index.folder import SearchIndex
        from fastslow_cli.search.loading import load_query_models
        from fastslow_cli.search.searcher import Searcher

        opened = SearchIndex.open(self.index_dir(index or self.default_index()))
        slow_path = opened.model_location("slow") if rerank else None
        models = load_query_models(opened.model_location("fast"), slow_path, device, engine)
        if models.note:
            _emit(progress, "note", message=models.note)
        return Searcher(opened, models.fast, models.slow, engine=models.engine)

    # ---- eval -------------------------------------------------------------------------
    def evaluate(
        self,
        captions: CaptionsPaths,
        *,
        split: str = "test",
        set: str = "default",  # noqa: A002
        fast: str | None = "fast",
        slow: str | None = "slow",
        distilled: str | None = None,
        rerank: int = 0,
        alpha: float | None = None,
        queries: int | None = None,
        media_root: str | os.PathLike[str] | None = None,
        html: str | os.PathLike[str] | None = None,
        sweep: Sequence[int] | None = None,
        device: str = "auto",
        progress: Progress | None = None,
        memory: str | None = None,
    ) -> list[dict[str, Any]]:
        """R@1/5/10, median rank, twin accuracy and ms/query of each model on a captions split.

        `html` also writes the report page there (eval/report.py): the rows, the re-ranking
        depths `sweep` (default 0, 5, 10, 20, 50, 100; capped at the split's items), the
        calibration of relevance and twin pairs won and lost.
        """
        from fastslow_cli import __version__
        from fastslow_cli.atomic import check_writable
        from fastslow_cli.data.captioned_set import captioned_set
        from fastslow_cli.eval.runs import DEFAULT_SWEEP, evaluate_split

        depths = list(DEFAULT_SWEEP if sweep is None else sweep)
        if html is not None:
            if not depths or any(int(k) != k or k < 0 for k in depths):
                raise UsageError(f"--sweep must list re-ranking depths of 0 or more (0 = Fast only), got {depths}")
            if Path(html).is_dir():
                raise UsageError(f"--html {html} is a folder: name the report file, e.g. {Path(html) / 'report.html'}")
            check_writable(Path(html).parent)  # before the evaluation, not when its result is written
        store = self.store(set, progress)
        data = captioned_set(store, captions, (split,), media_root)
        _report_matching(data, progress)
        fingerprint = store.fingerprint()
        fast_model = self.load_fast(fast, device) if fast else None
        slow_model = self.load_slow(slow, device) if slow else None
        distilled_model = self.load_fast(distilled, device) if distilled else None
        for m, what in ((fast_model, "Fast"), (slow_model, "Slow"), (distilled_model, "distilled")):
            if m is not None:
                _check_fingerprint(store, fingerprint, m.identity, what)
        if rerank and slow_model is None:
            raise UsageError("--rerank needs a Slow model: pass --slow NAME")
        count = len(data.pairs[split]) if queries is None else min(queries, len(data.pairs[split]))
        _emit(progress, "info", message=f"eval on split '{split}': {count} captions, {len(data.table.ids)} items")
        evaluation = evaluate_split(
            store, data, split, fast_model, slow_model, distilled_model, rerank, alpha,
            status=lambda method: _emit(progress, "phase", message=f"evaluating {method}"), max_queries=queries,
            memory_dtype=memory,
            sweep=depths if html is not None else None,
        )
        if html is not None:
            from fastslow_cli.eval.report import write_report

            models = {what: m.identity.get("path") or m.identity.get("name")
                      for what, m in (("fast", fast_model), ("distilled", distilled_model), ("slow", slow_model)) if m}
            path = write_report(evaluation, html, {"version": __version__, "models": models})
            _emit(progress, "info", message=f"wrote the report {path}")
        return evaluation.rows


def _index_thumbnails(store: FeatureStore, progress: Progress | None) -> None:
    """`index update` also gives the set's items their missing thumbnails (store/thumbs.py),
    unless an `extract` is writing the set right now (it fills them itself at its end)."""
    from fastslow_cli.features.extract import fill_thumbnails

    try:
        with store.lock():
            fill_thumbnails(store, progress=progress)
    except FastslowError as exc:
        _emit(progress, "note", message=f"thumbnails not checked: {exc}")


def _index_encoder(
    engine: str, address: str | None, workers: int | None, gpus_per_worker: float | None, features_url: str | None = None
) -> Encoder:
    """Where `build_index` encodes the items: this process, or Ray actors (checked before any
    model is loaded; the Ray-only options are refused with the local engine)."""
    from fastslow_cli.index.folder import local_encoder

    if engine == "local":
        flags = (("--address", address), ("--workers", workers), ("--gpus-per-worker", gpus_per_worker),
                 ("--features-url", features_url))
        given = [flag for flag, value in flags if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only for --engine ray (add --engine ray, or leave {'them' if len(given) > 1 else 'it'} out)")
        return local_encoder
    if engine != "ray":
        raise UsageError(f"unknown --engine {engine!r}: use local or ray")
    from fastslow_cli.index.encode_ray import DEFAULT_WORKERS, RayEncoder
    from fastslow_cli.ray_cluster import check_address, import_ray
    from fastslow_cli.store.published import check_url

    import_ray()  # not installed: one line now, before the models load
    return RayEncoder(
        check_address(address), DEFAULT_WORKERS if workers is None else workers, gpus_per_worker or 0.0,
        None if features_url is None else check_url(features_url),
    )


def _check_fingerprint(store: FeatureStore, fingerprint: str, identity: dict[str, Any], what: str) -> None:
    need = identity.get("fingerprint")
    if need and need != fingerprint:
        raise FastslowError(
            f"the {what} model {identity.get('path')} was trained on other features than {store.directory}: "
            "use the feature set it was trained on (--set) or retrain it"
        )


def _report_matching(data: CaptionedSet, progress: Progress | None) -> None:
    for report in data.files:  # the counts too, for callers that want more than the line
        _emit(progress, "info", message=f"captions {report.describe()}", **asdict(report))
    for note in data.notes:
        _emit(progress, "note", message=note)
    if data.unmatched:
        _emit(
            progress, "warning",
            message=f"{data.unmatched} caption(s) name media that is not in the feature set "
            f"(e.g. {data.unmatched_example}); extract it (or pass --media-root) to use them",
        )


def _with_overrides(args: Any, epochs: int | None, batch_size: int | None, lr: float | None, seed: int) -> Any:
    """The defaults of `args` with what the user set."""
    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    if batch_size is not None:
        overrides["min_steps"] = 0  # a batch size the user asked for is used as is
    return replace(args, seed=seed, **overrides)


def _save_trained(
    model_dir: Path, result: Any, features: dict[str, Any], training: dict[str, Any], kind: str, progress: Progress | None
) -> TrainSummary:
    """Checkpoint + `train_log.jsonl` (one record per epoch); the summary of the best epoch."""
    from fastslow_cli.atomic import atomic_write_text
    from fastslow_cli.models.checkpoint import save_model
    from fastslow_cli.models.files import export_enabled

    extra: dict[str, Any] = {"best": result.best}
    if result.calibration is not None:  # relevance = P(match), for `search --min-score`
        extra["calibration"] = result.calibration.to_json()
    save_model(model_dir, result.model, result.tokenizer, features, training=training, extra=extra)
    atomic_write_text(model_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
    if export_enabled():
        _export_graph(model_dir, progress, result.model)
    best = {k: v for k, v in result.best.items() if k != "best"}
    _emit(
        progress, "info",
        message=f"saved {model_dir}: best epoch {best.get('epoch')} with val R@1 {best.get('val_R@1', float('nan')):.1f}",
    )
    return TrainSummary(model_dir.name, str(model_dir), kind, best)


def _export_graph(model_dir: Path, progress: Progress | None, model: Any = None) -> dict[str, Any]:
    """Export one model's ONNX query graph (models/export.py), telling `progress` (it takes seconds)."""
    import time

    from fastslow_cli.models.export import export_query_graph

    _emit(progress, "phase", message=f"exporting the ONNX query graph of {model_dir.name}")
    started = time.perf_counter()
    graph = export_query_graph(model_dir, model)
    seconds = time.perf_counter() - started
    _emit(progress, "info", message=f"wrote {graph} in {seconds:.1f} s (search runs on it without torch)")
    return {"model": model_dir.name, "graph": str(graph), "seconds": round(seconds, 2)}


def _export_missing_graphs(models: Sequence[Any], progress: Progress | None) -> None:
    """Give native models an index is built or updated with their ONNX graph when they lack
    a current one (models saved before graphs existed, or with FASTSLOW_ONNX_EXPORT=0 then)."""
    from fastslow_cli.models.files import export_enabled, is_native, query_graph

    if not export_enabled():
        return
    for model in models:
        path = Path(str(model.identity.get("path", "")))
        if is_native(path) and query_graph(path)[0] is None:
            _export_graph(path, progress)
