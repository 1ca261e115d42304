"""Reading documents from what ``--data`` points at, lazily (corpora larger than RAM stream through).

Formats, detected from the path:
  - a ``datasets`` dataset saved with ``save_to_disk`` (a directory with ``dataset_info.json``,
    ``state.json`` or ``dataset_dict.json``), read batch by batch from its memory-mapped Arrow files;
  - JSONL (``.jsonl`` / ``.json``): one JSON object per line with a text field;
  - plain text (any other file), cut into documents at blank lines once a document has
    ``TEXT_DOC_CHARS`` characters, so a single large file still has many documents to split;
  - a directory of such files (``*.txt``, ``*.md``, ``*.rst``, ``*.jsonl``, ``*.json``), in sorted order.

A record is ``(prompt, text)``: the prompt is the part fine-tuning can mask out of the loss
(empty for pretraining).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

TEXT_DOC_CHARS = 2000
TEXT_SUFFIXES = (".txt", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".json")
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")

Record = tuple[str, str]


def data_format(path: Path) -> str:
    """'datasets', 'jsonl', 'text' or 'directory'."""
    if not path.exists():
        raise UserError(f"data path {str(path)!r} does not exist; pass a text or JSONL file, a "
                        "directory of them, or a dataset saved with datasets' save_to_disk")
    if path.is_dir():
        return "datasets" if any((path / m).exists() for m in DATASET_MARKERS) else "directory"
    return "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"


# Magic numbers of the compressed and archive formats a corpus is often shipped in.
_COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip"), b"BZh": ("bzip2", "bunzip2"),
               b"\xfd7zXZ\x00": ("xz", "unxz"), b"\x28\xb5\x2f\xfd": ("zstd", "unzstd"),
               b"PK\x03\x04": ("zip", "unzip"), b"7z\xbc\xaf\x27\x1c": ("7z", "7z x")}
_SAMPLE = 1 << 16


def check_text_file(path: Path) -> None:
    """Refuse, in one line, a file that is not UTF-8 text: compressed, binary (NUL bytes) or in
    another encoding (more than 1% of its first 64 KiB undecodable)."""
    with open(path, "rb") as f:
        head = f.read(_SAMPLE)
    for magic, (kind, tool) in _COMPRESSED.items():
        if head.startswith(magic):
            raise UserError(f"{path} is {kind}-compressed; decompress it first ({tool} {path.name}) "
                            "and pass the text")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path} is UTF-16 text; convert it to UTF-8 first (iconv -f utf-16 -t "
                        f"utf-8 {path.name})")
    if b"\x00" in head:
        raise UserError(f"{path} is not text (it holds NUL bytes: a binary file?); pass UTF-8 text, "
                        "JSONL or a saved dataset")
    text = head.decode("utf-8", errors="replace")
    if len(head) == _SAMPLE:  # the sample may end inside a character
        text = text[:-1]
    bad = text.count("\ufffd")
    if bad > 0.01 * max(len(text), 1):
        raise UserError(f"{path} is not UTF-8 text ({bad} undecodable characters in its first "
                        f"{len(head) // 1024} KiB); convert it, e.g. iconv -f latin1 -t utf-8")


def _files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
    if not files:
        raise UserError(f"directory {str(path)!r} holds no .txt, .md, .rst, .jsonl or .json files; "
                        "point --data at a file or a directory of text files")
    return files


def fingerprint(path: Path) -> str:
    """Changes when any input file changes (path, size, modification time); cheap to compute."""
    fmt = data_format(path)
    files = _files(path) if fmt == "directory" else (
        sorted(p for p in path.rglob("*") if p.is_file()) if fmt == "datasets" else [path])
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def iter_records(path: Path, text_field: str = "text", prompt_field: str | None = None
                 ) -> Iterator[Record]:
    """Yield ``(prompt, text)`` records from ``path``; see the module docstring for the formats."""
    fmt = data_format(path)
    if fmt == "datasets":
        yield from _dataset_records(path, text_field, prompt_field)
    elif fmt == "directory":
        for f in _files(path):
            yield from iter_records(f, text_field, prompt_field)
    elif fmt == "jsonl":
        check_text_file(path)
        yield from _jsonl_records(path, text_field, prompt_field)
    else:
        check_text_file(path)
        if prompt_field:
            raise UserError(f"--prompt-field needs JSONL or a saved dataset, but {str(path)!r} is "
                            "plain text; store prompt and response as fields of a JSONL file")
        yield from (("", doc) for doc in _text_documents(path))


def _text_documents(path: Path) -> Iterator[str]:
    lines: list[str] = []
    size = 0
    with open(path, encoding="utf-8", errors="replace", newline=None) as f:
        for line in f:
            lines.append(line)
            size += len(line)
            if size >= TEXT_DOC_CHARS and not line.strip():
                yield "".join(lines)
                lines, size = [], 0
    if "".join(lines).strip():
        yield "".join(lines)


def _field(obj: dict, field: str, where: str) -> str:
    if field not in obj:
        raise UserError(f"{where} has no field {field!r} (fields: {', '.join(map(str, obj)) or 'none'}); "
                        "pass the right name with --text-field / --prompt-field")
    value = obj[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} holds {type(value).__name__}, not text")
    return value


def _jsonl_records(path: Path, text_field: str, prompt_field: str | None) -> Iterator[Record]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where} is not valid JSON ({err.msg}); JSONL needs one JSON "
                                "object per line") from None
            if not isinstance(obj, dict):
                raise UserError(f"{where} holds a JSON {type(obj).__name__}, not an object with a "
                                f"{text_field!r} field")
            prompt = _field(obj, prompt_field, where) if prompt_field else ""
            yield prompt, _field(obj, text_field, where)


def _dataset_records(path: Path, text_field: str, prompt_field: str | None) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for unreadable directories
        raise UserError(f"could not load the saved dataset at {str(path)!r} ({err}); save it with "
                        "Dataset.save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds and len(ds) != 1:
            raise UserError(f"the dataset at {str(path)!r} has splits {list(ds)} but no 'train'; "
                            "save the split to train on")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    for field in filter(None, (text_field, prompt_field)):
        if field not in ds.column_names:
            raise UserError(f"the dataset at {str(path)!r} has no column {field!r} (columns: "
                            f"{', '.join(ds.column_names)}); pass --text-field / --prompt-field")
    columns = [c for c in (prompt_field, text_field) if c]
    for column in columns:
        feature = ds.features[column]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise UserError(f"the dataset at {str(path)!r}: column {column!r} holds "
                            f"{getattr(feature, 'dtype', type(feature).__name__)}, not text; pass the "
                            "text column with --text-field (and the prompt's with --prompt-field)")
    for batch in ds.select_columns(columns).iter(batch_size=1000):
        prompts = batch[prompt_field] if prompt_field else [""] * len(batch[text_field])
        yield from zip(prompts, batch[text_field])
