"""Make token shards: `python -m data.prepare {fineweb,text,pydocs} ...` (the format lives in data/shards.py).

fineweb  Download the public speedrun's pre-tokenized FineWeb shards from the Hugging Face hub, or copy them
         from a folder (data/fineweb.py).

text     Tokenize files, folders (recursive, filtered by --glob) and .jsonl files (one JSON object a line,
         the document in --text-field) with GPT-2, <|endoftext|> (50256) *before* each document as the
         speedrun's FineWeb shards have it. Each document goes to val when
             blake2b-64("<seed>:<document id>") / 2**64 < val_fraction
         (at least one document goes to val when val_fraction > 0, the one with the smallest hash), so the
         split is a deterministic function of the document ids and the seed, not of Python's salted hash().
         A single document cannot be split that way: it goes to train, and the last val_fraction of its
         tokens (at least one) is held out as val.
         A document id is the file's path relative to the folder it was found in (its name when given
         directly), plus ":<line number>" for a .jsonl line. Documents are written in a seeded random order,
         as the speedrun's FineWeb shards are shuffled (a sorted corpus would feed training one source
         folder at a time): sorted by
             blake2b-64("order:<shuffle seed>:<document id>")
         again a function of the ids alone, so adding a document does not reorder the others.
         --shuffle-seed is separate from --seed on purpose: --seed chooses the held-out documents, and a new
         train order must not change the val set (val losses of two orders stay comparable), nor a new
         split reorder the train stream. --no-shuffle keeps the sorted order (id order within a source).
         Tokens fill `{name}_val_000000.bin`, `{name}_train_000000.bin`, ... of --shard-tokens each (a
         document may continue in the next shard), and `{name}_manifest.json` records documents and tokens
         per split, sources, both seeds and both rules. The output is byte-identical for any --workers.
         Input that holds no text (empty files, .jsonl without records) or is not UTF-8 is refused, naming
         the file.

pydocs   The text pipeline over Debian's python3-doc sources (**/*.rst.txt, ~3.55M tokens), name "pydocs": the
         offline default corpus of the CPU track. They are looked for under the version-neutral
         /usr/share/doc/python3/html/_sources first, then /usr/share/doc/python3.X/html/_sources.

A command that fails leaves the output folder as it was: text shards are written to a hidden staging folder
inside --out and moved into place only once every document is tokenized, and folders the command created are
removed again (the FineWeb download too, data/fineweb.py). Progress bars are drawn on a terminal only (not into
logs, where an error stays the last, single line).
"""

import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from data.errors import BadOption, PrepareError
from data.fineweb import FINEWEB_REPO, download_fineweb, fineweb_filenames
from data.shards import read_header, write_shard
from data.tokenizer import EOT_ID, gpt2_encoding
from speedrun import cli
from speedrun.atomic import atomic_write, made_dirs

__all__ = ["BadOption", "PrepareError", "download_fineweb", "fineweb_filenames", "main", "prepare_pydocs",
           "prepare_text"]
# Debian's python3-doc: the version-neutral link first (it points at the default Python's docs), then any version
PYDOCS_CANDIDATES = (Path("/usr/share/doc/python3/html/_sources"),
                     Path(f"/usr/share/doc/python3.{sys.version_info.minor}/html/_sources"),
                     *sorted(Path("/usr/share/doc").glob("python3.*/html/_sources"), reverse=True))


def find_pydocs() -> Path | None:
    """The installed Python documentation sources (PYDOCS_CANDIDATES, first found), or None."""
    return next((p for p in PYDOCS_CANDIDATES if p.is_dir()), None)


PYDOCS_DIR = find_pydocs() or PYDOCS_CANDIDATES[0]
PYDOCS_INSTALL = "apt-get update && apt-get install -y python3-doc"
DEFAULT_SHARD_TOKENS = 100_000_000  # FineWeb's shard size
CHUNK_DOCS, CHUNK_CHARS = 256, 4_000_000  # documents per tokenizer task: enough work to amortise the pickling


# ----------------------------------------------------------------------------------------------- text


class Document(NamedTuple):
    id: str
    path: Path
    line: int | None = None  # .jsonl: the line number (1-based), counting b"\n" only
    offset: int | None = None  # .jsonl: the byte offset of that line, so a shuffled order reads it directly


def list_documents(paths, *, glob: str = "*", limit_files: int | None = None) -> list[Document]:
    """Enumerate documents without reading their text, in sorted order (files sorted, then .jsonl lines)."""
    files = []  # (id prefix, path)
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob(glob)):
                rel = f.relative_to(p)
                if f.is_file() and not any(part.startswith(".") for part in rel.parts):
                    files.append((rel.as_posix(), f))
        elif p.is_file():
            files.append((p.name, p))
        else:
            raise PrepareError(f"{p}: no such file or folder")
    if limit_files is not None:
        files = files[:limit_files]
    if not files:
        raise PrepareError(f"no input files in {[str(p) for p in paths]} (glob {glob!r})")
    docs = []
    for file_id, f in files:
        if f.suffix == ".jsonl":
            with open(f, "rb") as lines:
                offset = 0
                for n, line in enumerate(lines, 1):
                    if line.strip():
                        docs.append(Document(f"{file_id}:{n}", f, n, offset))
                    offset += len(line)
        else:
            docs.append(Document(file_id, f))
    if not docs:
        raise PrepareError(f"no documents in {', '.join(str(f) for _, f in files)}: the .jsonl files hold no records")
    if all(d.line is None for d in docs) and all(d.path.stat().st_size == 0 for d in docs):
        what = f"{docs[0].path} is empty (0 bytes)" if len(docs) == 1 else f"all {len(docs)} input files are empty"
        raise PrepareError(f"{what}: there is no text to tokenize")
    return docs


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def split_key(doc_id: str, seed: int) -> float:
    """The document's uniform split key in [0, 1): it goes to val when the key is below val_fraction."""
    return _hash64(f"{seed}:{doc_id}") / 2**64


def shuffled(docs: list[Document], shuffle_seed: int) -> list[Document]:
    """`docs` in the seeded random order: by blake2b-64("order:<shuffle_seed>:<id>"), ties by id."""
    return sorted(docs, key=lambda d: (_hash64(f"order:{shuffle_seed}:{d.id}"), d.id))


def _read_texts(docs, text_field, named=()):
    """Yield the text of each document in the order given (a .jsonl line is read at its offset). `named`: the
    files given by name (not found in a folder), for the advice when one is not text."""
    for doc in docs:
        f, line_no = doc.path, doc.line
        try:
            if line_no is None:
                yield f.read_text(encoding="utf-8")
                continue
            with open(f, "rb") as lines:  # reopened per line: in shuffled order consecutive lines rarely share a file
                lines.seek(doc.offset)
                line = lines.readline()
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            where = f":{line_no}" if line_no is not None else ""
            advice = ("data.prepare text reads UTF-8 text" if f in named
                      else "leave such files out of the folder's input with --glob")
            raise PrepareError(f"{f}{where} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}: "
                               f"a binary file?); {advice}") from e
        except json.JSONDecodeError as e:
            raise PrepareError(f"{f}:{line_no}: not valid JSON: {e}") from e
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise PrepareError(f"{f}:{line_no}: no string field {text_field!r} (set --text-field)")
        yield record[text_field]


def _chunks(items):
    """Group (split, text) pairs into tokenizer tasks."""
    chunk, chars = [], 0
    for item in items:
        chunk.append(item)
        chars += len(item[1])
        if len(chunk) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _encode_chunk(chunk, num_threads=1):
    """[(split, text)] -> [(split, uint16 tokens with EOT first)]."""
    encoded = gpt2_encoding().encode_ordinary_batch([text for _, text in chunk], num_threads=num_threads)
    return [(split, np.array([EOT_ID] + ids, dtype=np.uint16)) for (split, _), ids in zip(chunk, encoded)]


class _ShardWriter:
    """Appends tokens to `{name}_{split}_NNNNNN.bin` shards of shard_tokens each."""

    def __init__(self, out: Path, name: str, split: str, shard_tokens: int):
        self.out, self.name, self.split, self.shard_tokens = out, name, split, shard_tokens
        self.parts, self.buffered = [], 0
        self.files, self.documents, self.tokens = [], 0, 0

    def add(self, tokens: np.ndarray):
        self.documents += 1
        self.tokens += len(tokens)
        while len(tokens):
            take = min(len(tokens), self.shard_tokens - self.buffered)
            self.parts.append(tokens[:take])
            self.buffered += take
            tokens = tokens[take:]
            if self.buffered == self.shard_tokens:
                self.flush()

    def flush(self):
        if self.buffered:
            path = self.out / f"{self.name}_{self.split}_{len(self.files):06d}.bin"
            write_shard(path, np.concatenate(self.parts))
            self.files.append(path)
            self.parts, self.buffered = [], 0

    def move_to(self, out: Path):
        """Move the shards written so far into `out` (the staging folder's work is done)."""
        moved = []
        for f in self.files:
            os.replace(f, out / f.name)
            moved.append(out / f.name)
        self.out, self.files = out, moved

    def remove_stale(self):
        """Delete shards of this name and split left by an earlier, longer run."""
        pattern = re.compile(rf"{re.escape(self.name)}_{self.split}_\d{{6}}\.bin")
        for f in self.out.iterdir():
            if pattern.fullmatch(f.name) and f not in self.files:
                tqdm.write(f"removing stale shard {f}")
                f.unlink()


def prepare_text(paths, out, *, name: str = "text", val_fraction: float = 0.05, seed: int = 0,
                 shuffle_seed: int | None = 0, text_field: str = "text", workers: int | None = None,
                 shard_tokens: int = DEFAULT_SHARD_TOKENS, glob: str = "*", limit_files: int | None = None) -> dict:
    """Tokenize documents into train/val shards in `out`; returns the manifest (also written as JSON).
    `seed` decides the split, `shuffle_seed` the order (None: sorted order)."""
    if not 0 <= val_fraction < 1:
        raise BadOption(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise BadOption(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if not re.fullmatch(r"[\w.-]+", name):
        raise BadOption(f"--name {name!r} must be letters, digits, '.', '-' or '_'")
    if workers is not None and workers < 1:
        raise BadOption(f"--workers must be >= 1, got {workers} (leave it out for one per CPU core)")
    if limit_files is not None and limit_files < 1:
        raise BadOption(f"--limit-files must be >= 1, got {limit_files}")
    workers = workers or os.cpu_count() or 1
    docs = list_documents(paths, glob=glob, limit_files=limit_files)
    if shuffle_seed is not None:
        docs = shuffled(docs, shuffle_seed)
    keys = [split_key(doc.id, seed) for doc in docs]
    splits = ["val" if key < val_fraction else "train" for key in keys]
    if len(docs) == 1 and val_fraction > 0:
        splits = ["held-out tail"]  # train, and the last val_fraction of its tokens as val
    elif val_fraction > 0 and "val" not in splits:
        splits[int(np.argmin(keys))] = "val"
    if "train" not in splits and "held-out tail" not in splits:
        raise PrepareError(f"all {len(docs)} documents fell in val; lower --val-fraction or add documents")

    out = Path(out)  # created only once the inputs are known to be good
    with made_dirs(out):
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".partial", dir=out))
        try:
            writers = _tokenize(docs, splits, staging, name=name, val_fraction=val_fraction, text_field=text_field,
                                workers=workers, shard_tokens=shard_tokens, named={Path(p) for p in paths})
            if all(w.tokens == w.documents for w in writers.values()):  # every document was only its EOT
                raise PrepareError(f"the {len(docs)} input document(s) hold no text to tokenize")
            for writer in writers.values():
                writer.move_to(out)
                writer.remove_stale()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    manifest = {
        "name": name,
        "tokenizer": "gpt2",
        "eot_id": EOT_ID,
        "eot": "before each document",
        "sources": [str(p) for p in paths],
        "glob": glob,
        "text_field": text_field,
        "limit_files": limit_files,
        "seed": seed,
        "val_fraction": val_fraction,
        "split_rule": "val iff blake2b-64('<seed>:<document id>')/2**64 < val_fraction; at least one val document",
        "shuffle_seed": shuffle_seed,
        "order_rule": ("sorted by blake2b-64('order:<shuffle_seed>:<document id>'), ties by id"
                       if shuffle_seed is not None else "sorted files, then .jsonl lines in file order"),
        "shard_tokens": shard_tokens,
        "splits": {split: {"documents": w.documents, "tokens": w.tokens, "files": [f.name for f in w.files]}
                   for split, w in writers.items()},
    }
    if splits == ["held-out tail"]:
        manifest["split_rule"] = "one document: train, its last val_fraction of tokens (at least one) val"
    with atomic_write(out / f"{name}_manifest.json", "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _tokenize(docs, splits, staging: Path, *, name, val_fraction, text_field, workers, shard_tokens, named):
    """Tokenize the documents into shards in `staging`; returns the train and val writers."""
    writers = {split: _ShardWriter(staging, name, split, shard_tokens) for split in ("train", "val")}
    tasks = _chunks(zip(splits, _read_texts(docs, text_field, named)))
    gpt2_encoding()  # build (or fetch) the tokenizer once, before any worker forks
    progress = tqdm(total=len(docs), desc=f"{name} -> {staging.parent}", unit="doc", disable=None)
    with progress, multiprocessing.Pool(workers) if workers > 1 else _InProcess() as pool:
        # a few tasks per worker at a time: files are read in this process, and memory stays bounded
        for group in iter(lambda: list(itertools.islice(tasks, 4 * workers)), []):
            for encoded in pool.imap(_encode_chunk, group):
                for split, tokens in encoded:
                    if split == "held-out tail":
                        held = max(1, round(len(tokens) * val_fraction))
                        if len(tokens) - held < 2:
                            raise PrepareError(f"{docs[0].path} holds {len(tokens) - 1} token(s): too few to hold "
                                               f"out {val_fraction:g} of them as val; use --val-fraction 0 or more "
                                               "text")
                        writers["train"].add(tokens[:-held])
                        writers["val"].add(tokens[-held:])
                    else:
                        writers[split].add(tokens)
                progress.update(len(encoded))
                progress.set_postfix(tokens=f"{writers['train'].tokens + writers['val'].tokens:,}")
    for writer in writers.values():
        writer.flush()
    return writers


class _InProcess:
    """The Pool interface for workers=1: tokenize here, with tiktoken's own threads."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items):
        return (fn(item, num_threads=8) for item in items)


def prepare_pydocs(out="shards/pydocs", *, docs_dir=None, **kwargs) -> dict:
    """The text pipeline over the Python documentation sources (**/*.rst.txt), name "pydocs". docs_dir: where
    they are (None: the installed ones, find_pydocs)."""
    found = find_pydocs()
    if docs_dir is None:
        if found is None:
            raise PrepareError(f"the Python docs are not installed (looked in "
                               f"{', '.join(str(p) for p in PYDOCS_CANDIDATES)}); install them with: {PYDOCS_INSTALL}")
        docs_dir = found
    elif not Path(docs_dir).is_dir():
        where = (f"leave --docs-dir out to use the installed ones in {found}" if found
                 else f"the Python docs are not installed here either; install them with: {PYDOCS_INSTALL}")
        raise PrepareError(f"--docs-dir {docs_dir}: no such folder; {where}")
    return prepare_text([docs_dir], out, name="pydocs", glob="*.rst.txt", **kwargs)


# ----------------------------------------------------------------------------------------------- CLI


def _summary(manifest: dict) -> str:
    return "\n".join(f"{split}: {s['documents']:,} documents, {s['tokens']:,} tokens in {len(s['files'])} shard(s)"
                     for split, s in manifest["splits"].items())


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fw = sub.add_parser("fineweb", help="download pre-tokenized FineWeb shards from the Hugging Face hub")
    fw.add_argument("--train-shards", type=int, required=True, help="train shards 1..N (~100M tokens each)")
    fw.add_argument("--out", required=True)
    fw.add_argument("--repo-id", default=FINEWEB_REPO)
    fw.add_argument("--source", help="hub endpoint URL (default: HF_ENDPOINT or huggingface.co) or a local folder")
    fw.add_argument("--prefix", default="fineweb", help="file name prefix in the repository")
    fw.add_argument("--revision", default=None)

    def tokenizing(p):
        p.add_argument("--val-fraction", type=float, default=0.05)
        p.add_argument("--seed", type=int, default=0, help="chooses the val documents")
        p.add_argument("--shuffle-seed", type=int, default=0, help="chooses the document order")
        p.add_argument("--no-shuffle", action="store_true", help="sorted document order instead of a shuffle")
        p.add_argument("--workers", type=int, default=None, help="tokenizer processes, >= 1 (default: os.cpu_count())")
        p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS)
        p.add_argument("--limit-files", type=int, default=None, help="only the first N files (sorted)")

    tx = sub.add_parser("text", help="tokenize text files, folders and .jsonl into shards")
    tx.add_argument("paths", nargs="+")
    tx.add_argument("--out", required=True)
    tx.add_argument("--name", default="text")
    tx.add_argument("--text-field", default="text", help="the document field of .jsonl records")
    tx.add_argument("--glob", default="*", help="file name pattern inside folders")
    tokenizing(tx)

    py = sub.add_parser("pydocs", help=f"tokenize the Python docs in {PYDOCS_DIR}")
    py.add_argument("--out", default="shards/pydocs")
    py.add_argument("--docs-dir", default=None, help=f"default: the installed ones ({PYDOCS_DIR})")
    tokenizing(py)
    return parser


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fineweb":
            paths = download_fineweb(args.out, train_shards=args.train_shards, repo_id=args.repo_id,
                                     source=args.source, prefix=args.prefix, revision=args.revision)
            tokens = sum(read_header(p).num_tokens for p in paths)
            print(f"{len(paths)} shards, {tokens:,} tokens in {args.out}")
            return
        common = dict(val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
                      shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
                      shard_tokens=args.shard_tokens, limit_files=args.limit_files)
        if args.command == "text":
            manifest = prepare_text(args.paths, args.out, name=args.name, text_field=args.text_field,
                                    glob=args.glob, **common)
        else:
            manifest = prepare_pydocs(args.out, docs_dir=args.docs_dir, **common)
        print(_summary(manifest))
    except OSError as e:  # an output folder that cannot be created or written
        raise PrepareError(f"{e.filename or args.out}: {e.strerror}") from e


if __name__ == "__main__":
    cli.run_main(main)
