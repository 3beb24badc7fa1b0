"""Caption files, and matching their captions to extracted items.

Formats (chosen by extension, else by content):
- JSON Lines (.jsonl, .ndjson): one object per line, {"media": ..., "caption": ...,
  "split": ...}; blank lines are skipped, other keys ignored.
- CSV (.csv, .tsv): a header naming `media` and `caption` (and optionally `split`);
  the delimiter (comma, tab or semicolon) is the one that makes the header name them.
- JSON (.json): a Karpathy split file ({"images": [{"filepath"?, "filename", "split",
  "sentences": [{"raw"}]}]}, as dataset_coco.json / dataset_flickr30k.json: media =
  filepath/filename, one caption per sentence); a VATEX file ([{"videoID", "enCap": [...]}]:
  media = the videoID, which has no extension); or a list of JSON Lines style objects.

Splits: lower-cased; Karpathy "restval" and the aliases "training" -> "train",
"validation"/"valid"/"dev" -> "val", "testing"/"public_test" -> "test". A record without a
split is "train" (a plain list of captions is training data). VATEX files carry no split:
it comes from a word of the file name starting with train, val or test (vatex_training_v1.0
-> train, vatex_validation -> val, vatex_public_test_english -> test), else "train".

Caption text: whitespace runs become one space, ends stripped; an empty caption is an error.

Media paths resolve against the captions file's folder (its *root*), or against the media
root given with the file when the media are kept apart from it (Karpathy's
dataset_flickr30k.json next to nothing, the images in some flickr30k-images/ folder);
absolute paths and `~` are kept; symlinks are resolved, as in the feature store.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from fastslow_cli.errors import FastslowError
from fastslow_cli.media.location import as_path, is_folder, is_url

SPLIT_ALIASES = {
    "restval": "train",
    "training": "train",
    "validation": "val",
    "valid": "val",
    "dev": "val",
    "testing": "test",
    "public_test": "test",
}
DEFAULT_SPLIT = "train"

_RECORD = 'each line must be {"media": ..., "caption": ..., "split": ...}'
_FORMATS = (
    "use JSON Lines (.jsonl), CSV (.csv) with columns media,caption,split, "
    "a Karpathy dataset_*.json or a VATEX .json"
)


@dataclass(frozen=True)
class Caption:
    """One caption of one media file."""

    media: Path  # absolute and resolved (a VATEX videoID has no extension)
    caption: str
    split: str  # "train" | "val" | "test" | any other name found in the file
    source: str  # where it came from, for messages: "file:line" or "file: images[3]"
    root: Path | None = None  # folder `media` was resolved against (None: media's folder)


def normalise_split(value: str | None) -> str:
    """The canonical name of a split (see the module docstring)."""
    if value is None or not value.strip():
        return DEFAULT_SPLIT
    name = value.strip().lower()
    return SPLIT_ALIASES.get(name, name)


def load_captions(path: str | os.PathLike[str], media_root: str | os.PathLike[str] | None = None) -> list[Caption]:
    """Read every caption of a captions file, in file order; bad input is a FastslowError.

    `media_root` is the folder the media paths are relative to, when it is not the file's.
    """
    root = _media_root(media_root) if media_root is not None else None
    given = Path(path).expanduser()
    if not given.exists():
        raise FastslowError(f"captions file not found: {given}; check the path")
    if given.is_dir():
        raise FastslowError(f"{given} is a folder; give the captions file inside it ({_FORMATS})")
    try:
        text = given.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FastslowError(f"{given}: not UTF-8 text (byte {exc.start}); save the captions file as UTF-8") from None
    except OSError as exc:
        raise FastslowError(f"cannot read captions file {given}: {exc.strerror}; check its permissions") from None
    reader = _Reader(given, root or Path(os.path.realpath(given.parent)))
    fmt = _detect(given, text)
    captions = {"jsonl": reader.jsonl, "csv": reader.csv, "json": reader.json}[fmt](text)
    if not captions:
        raise FastslowError(f"{given}: no captions in the file; {_FORMATS}")
    return captions


def _media_root(folder: str | os.PathLike[str]) -> Path:
    if is_url(folder):  # media extracted from a URL: paired in the items' path form (location.as_path)
        if not is_folder(os.fspath(folder)):
            raise FastslowError(f"media root {os.fspath(folder)}: no such folder; pass --media-root the URL of the extracted folder")
        return Path(as_path(os.fspath(folder)))
    given = Path(folder).expanduser()
    if not given.is_dir():
        problem = "is not a folder" if given.exists() else "not found"
        raise FastslowError(f"media root {given}: {problem}; pass --media-root the folder that holds the media")
    return Path(os.path.realpath(given))


def _detect(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json":
        return "json"
    if text.lstrip()[:1] in ("{", "["):
        return "json"  # which also reads JSON Lines
    if _csv_delimiter(text.split("\n", 1)[0]) is not None:
        return "csv"
    raise FastslowError(f"{path}: unknown captions format; {_FORMATS}")


def _csv_delimiter(header: str) -> str | None:
    for delimiter in (",", "\t", ";"):
        names = {name.strip().lower() for name in next(csv.reader([header], delimiter=delimiter), [])}
        if {"media", "caption"} <= names:
            return delimiter
    return None


class _Reader:
    """Parses one file's text into Captions; knows the file for messages and the root for paths."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self._resolved: dict[str, Path] = {}

    def fail(self, where: str, problem: str, fix: str) -> FastslowError:
        return FastslowError(f"{self.path}{where}: {problem}; {fix}")

    def caption(self, media: str, text: Any, split: Any, where: str, fix: str) -> Caption:
        if text is None:
            raise self.fail(where, "no caption text", fix)
        if not isinstance(text, str):
            raise self.fail(where, "caption is not text", fix)
        if not text.strip():
            raise self.fail(where, "empty caption", fix)
        if split is not None and not isinstance(split, str):
            raise self.fail(where, "split is not text", fix)
        resolved = self._resolved.get(media)
        if resolved is None:
            resolved = self._resolved[media] = Path(os.path.realpath(self.root / Path(media).expanduser()))
        return Caption(resolved, " ".join(text.split()), normalise_split(split), f"{self.path}{where}", self.root)

    def record(self, obj: Any, where: str, fix: str) -> Caption:
        """A {"media", "caption", "split"} object (JSON Lines line, JSON list item)."""
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected an object, found {type(obj).__name__}", fix)
        media = obj.get("media")
        if not isinstance(media, str) or not media.strip():
            raise self.fail(where, 'missing "media"', fix)
        if "caption" not in obj:
            raise self.fail(where, 'missing "caption"', fix)
        return self.caption(media.strip(), obj["caption"], obj.get("split"), where, fix)

    def jsonl(self, text: str) -> list[Caption]:
        out = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise self.fail(f":{number}", f"not valid JSON ({exc.msg})", _RECORD) from None
            out.append(self.record(obj, f":{number}", _RECORD))
        return out

    def csv(self, text: str) -> list[Caption]:
        header = text.split("\n", 1)[0]
        delimiter = _csv_delimiter(header)
        if delimiter is None:
            found = ", ".join(repr(n.strip()) for n in next(csv.reader([header]), [])) or "nothing"
            raise self.fail(":1", f"the header must name the columns media and caption (found {found})",
                            "add a header line media,caption,split")
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        names = [n.strip().lower() for n in next(rows)]
        column = {name: names.index(name) for name in ("media", "caption", "split") if name in names}
        fix = f"each row needs {len(names)} fields: {delimiter.join(names)}"
        out = []
        for fields in rows:
            where = f":{rows.line_num}"
            if not any(f.strip() for f in fields):
                continue
            if len(fields) < len(names):
                raise self.fail(where, f"found {len(fields)} of {len(names)} fields", fix)
            media = fields[column["media"]].strip()
            if not media:
                raise self.fail(where, "empty media", fix)
            split = fields[column["split"]] if "split" in column else None
            out.append(self.caption(media, fields[column["caption"]], split, where, fix))
        return out

    def json(self, text: str) -> list[Caption]:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data" and text.lstrip().startswith("{"):
                return self.jsonl(text)  # JSON Lines in a .json file
            raise self.fail(f":{exc.lineno}", f"not valid JSON ({exc.msg})", _FORMATS) from None
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return self.karpathy(data["images"])
        if isinstance(data, dict) and "media" in data:
            return self.jsonl(text)  # a one-line JSON Lines file
        if isinstance(data, list) and data and isinstance(data[0], dict) and "videoID" in data[0]:
            return self.vatex(data)
        if isinstance(data, list):
            return [self.record(obj, f": item [{i}]", 'each item must be {"media", "caption", "split"}')
                    for i, obj in enumerate(data)]
        raise self.fail("", 'neither a Karpathy file ({"images": [...]}) nor a list of captions', _FORMATS)

    def karpathy(self, images: list[Any]) -> list[Caption]:
        fix = 'each image needs "filename", "split" and "sentences": [{"raw": ...}]'
        out = []
        for i, image in enumerate(images):
            where = f": images[{i}]"
            if not isinstance(image, dict) or not isinstance(image.get("filename"), str) or not image["filename"]:
                raise self.fail(where, 'missing "filename"', fix)
            media = PurePath(image.get("filepath") or "", image["filename"]).as_posix()
            sentences = image.get("sentences")
            if not isinstance(sentences, list) or not sentences:
                raise self.fail(where, 'no "sentences"', fix)
            for j, sentence in enumerate(sentences):
                text = sentence.get("raw") if isinstance(sentence, dict) else None
                if text is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                    text = " ".join(str(t) for t in sentence["tokens"])
                out.append(self.caption(media, text, image.get("split"), f"{where}.sentences[{j}]", fix))
        return out

    def vatex(self, videos: list[Any]) -> list[Caption]:
        fix = 'each video needs "videoID" and "enCap": [...] (the VATEX private test file has no captions)'
        split = _split_from_name(self.path.name)
        out = []
        for i, video in enumerate(videos):
            where = f": [{i}]"
            if not isinstance(video, dict) or not isinstance(video.get("videoID"), str) or not video["videoID"]:
                raise self.fail(where, 'missing "videoID"', fix)
            texts = video.get("enCap")
            if not isinstance(texts, list) or not texts:
                raise self.fail(where, 'no English captions ("enCap")', fix)
            for j, text in enumerate(texts):
                out.append(self.caption(video["videoID"], text, video.get("split", split), f"{where}.enCap[{j}]", fix))
        return out


def _split_from_name(name: str) -> str:
    """The split named by a word of a file name: vatex_training_v1.0.json -> train."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    for prefix in ("train", "val", "test"):
        if any(word.startswith(prefix) for word in words):
            return prefix
    return DEFAULT_SPLIT


# --------------------------------------------------------------------------- matching


def match_captions(
    captions: Sequence[Caption], items: Mapping[str, str]
) -> tuple[list[tuple[Caption, str]], list[Caption]]:
    """Pair captions with extracted items (id -> absolute resolved path).

    A caption matches the item at its resolved media path. Failing that, it matches the
    one item under its root (the media root, else the captions file's folder) whose path
    ends with the media path as written: "1000092795.jpg" finds
    root/flickr30k-images/1000092795.jpg, and a media without extension (a VATEX videoID)
    matches on the file stem, so "abc" finds root/videos/abc.mp4. Several such items are
    ambiguous: a FastslowError listing them, since guessing would pair captions with the
    wrong video. Several items with the very same path are one file extracted twice: the
    first id in sorted order is used.

    Returns (caption, item id) pairs in caption order, and the captions with no item.
    """
    by_path: dict[str, str] = {}
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for item_id in sorted(items):
        path = items[item_id]
        by_path.setdefault(path, item_id)
        name = PurePath(path).name
        by_name.setdefault(name, []).append(item_id)
        by_stem.setdefault(PurePath(name).stem, []).append(item_id)

    found: dict[tuple[Path, Path | None], str | None] = {}
    ambiguous: list[tuple[Caption, list[str]]] = []
    pairs, unmatched = [], []
    for cap in captions:
        key = (cap.media, cap.root)
        if key not in found:
            exact = by_path.get(str(cap.media))
            if exact is not None:
                found[key] = exact
            else:
                candidates = _under_root(cap, items, by_name, by_stem)
                found[key] = candidates[0] if len(candidates) == 1 else None
                if len(candidates) > 1:
                    ambiguous.append((cap, candidates))
        item_id = found[key]
        if item_id is None:
            unmatched.append(cap)
        else:
            pairs.append((cap, item_id))
    if ambiguous:
        cap, candidates = ambiguous[0]
        shown = ", ".join(items[c] for c in candidates[:3]) + (", ..." if len(candidates) > 3 else "")
        more = f" (and {len(ambiguous) - 1} more media)" if len(ambiguous) > 1 else ""
        raise FastslowError(
            f"{cap.source}: media {cap.media.name!r} matches {len(candidates)} extracted files ({shown}){more}; "
            "write the full relative path with its extension in the captions, or extract only one copy"
        )
    return pairs, unmatched


def _under_root(
    cap: Caption, items: Mapping[str, str], by_name: dict[str, list[str]], by_stem: dict[str, list[str]]
) -> list[str]:
    """Items under the caption's root whose path ends with the media path as written."""
    written = written_path(cap)
    if not written:
        return []
    root = cap.root or cap.media.parent
    prefix = str(root).rstrip(os.sep) + os.sep
    index = by_name if PurePath(written[-1]).suffix else by_stem
    return [i for i in index.get(written[-1], []) if items[i].startswith(prefix) and _ends_with(items[i], written)]


def written_path(cap: Caption) -> tuple[str, ...]:
    """The media path as its file wrote it, relative to its root; () when it lies outside."""
    try:
        return cap.media.relative_to(cap.root or cap.media.parent).parts
    except ValueError:
        return ()


def _ends_with(path: str, written: tuple[str, ...]) -> bool:
    """Whether `path` ends with the written media path (its last part by stem when written without extension)."""
    parts = PurePath(path).parts
    last = PurePath(path).name if PurePath(written[-1]).suffix else PurePath(path).stem
    return last == written[-1] and len(parts) > len(written) and parts[-len(written) : -1] == written[:-1]


def nearest_item(captions: Sequence[Caption], paths: Iterable[str]) -> tuple[Caption, str | None, Path | None]:
    """For messages about captions that matched nothing: the first caption whose file name
    (stem, for a media without extension) an item has, that item's path, and the media root
    that would have matched it (None when no root would: the path is absolute or its
    folders differ). With no such caption: the first caption, None, None."""
    by_name: dict[str, str] = {}
    by_stem: dict[str, str] = {}
    for path in sorted(paths):
        by_name.setdefault(PurePath(path).name, path)
        by_stem.setdefault(PurePath(path).stem, path)
    for cap in captions:
        written = written_path(cap)
        name = written[-1] if written else cap.media.name
        same = (by_name if PurePath(name).suffix else by_stem).get(name)
        if same is not None:
            root = Path(*PurePath(same).parts[: -len(written)]) if written and _ends_with(same, written) else None
            return cap, same, root
    return captions[0], None, None
