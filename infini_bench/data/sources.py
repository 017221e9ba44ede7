"""Text sources, all read through `datasets`: hub corpora (streamed), local files, embedded corpus."""

from dataclasses import dataclass
from pathlib import Path

from datasets import load_dataset

LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class HubSource:
    path: str
    text_field: str
    schema: tuple[str, ...]  # fields every record of the corpus has
    split: str = "train"


HUB_SOURCES = {
    # The uncopyrighted Pile mirror that the reference experiment streamed.
    "pile": HubSource("monology/pile-uncopyrighted", "text", ("text", "meta")),
    # PG-19 books, for long documents.
    "pg19": HubSource("deepmind/pg19", "text", ("short_book_title", "publication_date", "url", "text")),
}
SOURCE_KINDS = ("embedded", *HUB_SOURCES, "a local file or folder (.txt, .jsonl, .json, .parquet)")


def parse_source(spec: str) -> tuple[str, str | None]:
    """'embedded' | 'pile' | 'pg19' | 'pile:<local mirror>' | '<local path>' -> (kind, path)."""
    name, _, mirror = spec.partition(":")
    if name in HUB_SOURCES:
        if mirror and not Path(mirror).exists():
            raise ValueError(f"data: local mirror {mirror!r} of {name} does not exist")
        return name, mirror or None
    if spec == "embedded":
        return "embedded", None
    if Path(spec).exists():
        local_files(spec)  # checks that there is something to read
        return "local", spec
    raise ValueError(f"data: {spec!r} is not a known source or an existing path; accepted: {', '.join(SOURCE_KINDS)}")


def local_files(path: str) -> tuple[str, list[str]]:
    """The `datasets` builder and files for a local file or folder (one format per folder)."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    files = [f for f in files if "".join(f.suffixes[-1:]) in LOCAL_BUILDERS]
    if not files:
        raise ValueError(f"data: no readable files in {path!r}; accepted: {', '.join(LOCAL_BUILDERS)}")
    builders = {LOCAL_BUILDERS[f.suffix] for f in files}
    if len(builders) > 1:
        raise ValueError(f"data: {path!r} mixes formats {sorted(builders)}; accepted: one format per folder")
    builder = builders.pop()
    for f in files:
        _check_readable(f, builder)
    return builder, [str(f) for f in files]


def _check_readable(path: Path, builder: str, probe: int = 65536):
    """ValueError naming the field if a file's start is not what its suffix says: UTF-8 text
    (.txt, .json, .jsonl) or a Parquet file (its magic bytes)."""
    with open(path, "rb") as f:
        head = f.read(probe)
    if builder == "parquet":
        if head[:4] != b"PAR1":
            raise ValueError(f"data: {path} is not a Parquet file; accepted: {', '.join(LOCAL_BUILDERS)}")
        return
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if len(head) < probe or error.start < len(head) - 3:  # not only a character cut by the probe
            raise ValueError(f"data: {path} is not UTF-8 text (undecodable byte at offset {error.start}); "
                             f"accepted: UTF-8 {', '.join(s for s, b in LOCAL_BUILDERS.items() if b != 'parquet')}"
                             f" files or .parquet") from None


def stream_texts(kind: str, path: str | None):
    """Iterate over the documents of a hub corpus (or a local mirror with its schema) or of local files."""
    if kind == "local":
        builder, files = local_files(path)
        extra = {"sample_by": "document"} if builder == "text" else {}
        dataset = load_dataset(builder, data_files=files, split="train", streaming=True, **extra)
        text_field, schema = "text", ("text",)
    else:
        source = HUB_SOURCES[kind]
        if path is None:
            dataset = load_dataset(source.path, split=source.split, streaming=True)
        else:
            builder, files = local_files(path)
            dataset = load_dataset(builder, data_files=files, split="train", streaming=True)
        text_field, schema = source.text_field, source.schema
    for record in _records(dataset, path or kind):
        missing = [f for f in schema if f not in record]
        if missing:
            raise ValueError(f"data: records of {path or kind} lack the field(s) {missing}; expected {list(schema)}")
        yield record[text_field]


def _records(dataset, where):
    """The dataset's records; text that cannot be decoded is a ValueError naming the field
    (other errors, a network failure say, pass through as they are)."""
    try:
        yield from dataset
    except UnicodeDecodeError as error:
        raise ValueError(f"data: {where} is not UTF-8 text past its start ({error.reason} at byte "
                         f"{error.start} of a chunk)") from None
