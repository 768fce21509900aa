"""data/prepare.py: text/jsonl -> shards, pydocs on a subset, and FineWeb downloads through a loopback fake hub."""

import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data import prepare
from data.prepare import PYDOCS_DIR, PYDOCS_INSTALL, PrepareError, main, prepare_text
from data.shards import load_shard, write_shard
from data.tokenizer import EOT_ID, gpt2_encoding

# ----------------------------------------------------------------------------------------------- text


@pytest.fixture
def corpus(tmp_path):
    """A folder of 30 text documents (nested, plus a hidden file to skip) and a .jsonl of 12 records."""
    root = tmp_path / "corpus"
    texts = {}
    for i in range(30):
        rel = f"part{i % 3}/doc{i:02d}.txt"
        texts[rel] = f"Document {i}: " + " ".join(["speedrun"] * (i % 7)) + ("\n\nUnicode é ü — ok" if i % 5 else "")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(texts[rel], encoding="utf-8")
    (root / ".hidden").write_text("never read")
    records = [{"text": f"json record {i} " * (i + 1), "id": i} for i in range(12)]
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records[:6]) + "\n\n" +
                     "\n".join(json.dumps(r) for r in records[6:]) + "\n")
    texts.update({f"records.jsonl:{i + 1 + (i >= 6)}": r["text"] for i, r in enumerate(records)})
    return root, jsonl, texts


def _documents(out, name, split):
    """The documents of a split: its shards concatenated and cut at each EOT (which must start every document)."""
    files = sorted(Path(out).glob(f"{name}_{split}_*.bin"))
    tokens = np.concatenate([load_shard(f) for f in files]).tolist() if files else []
    assert not tokens or tokens[0] == EOT_ID
    starts = [i for i, t in enumerate(tokens) if t == EOT_ID] + [len(tokens)]
    return [gpt2_encoding().decode(tokens[a + 1 : b]) for a, b in zip(starts, starts[1:])], len(tokens)


def _run(corpus, out, **kwargs):
    root, jsonl, _ = corpus
    return prepare_text([root, jsonl], out, **{**dict(name="t", val_fraction=0.3, workers=1), **kwargs})


def test_text_round_trip_and_manifest(corpus, tmp_path):
    out = tmp_path / "out"
    manifest = _run(corpus, out)
    texts = corpus[2]
    seen = []
    for split in ("train", "val"):
        docs, n_tokens = _documents(out, "t", split)
        stats = manifest["splits"][split]
        assert stats["documents"] == len(docs) > 0 and stats["tokens"] == n_tokens
        seen += docs
    assert sorted(seen) == sorted(texts.values())  # every document exactly once, hidden file skipped
    assert json.loads((out / "t_manifest.json").read_text()) == manifest
    assert manifest["seed"] == 0 and manifest["sources"] == [str(p) for p in corpus[:2]]
    assert manifest["splits"]["val"]["files"] == ["t_val_000000.bin"]


def test_split_follows_the_documented_hash(corpus, tmp_path):
    texts = corpus[2]
    _run(corpus, tmp_path / "out", seed=7)
    expected_val = [texts[d] for d in sorted(texts, key=lambda d: (d.startswith("records"), d))
                    if prepare.split_key(d, 7) < 0.3]
    assert sorted(_documents(tmp_path / "out", "t", "val")[0]) == sorted(expected_val)


def test_split_is_deterministic_and_seeded(corpus, tmp_path):
    _run(corpus, tmp_path / "a", seed=1)
    _run(corpus, tmp_path / "b", seed=1)
    _run(corpus, tmp_path / "c", seed=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _documents(tmp_path / "a", "t", "val")[0] != _documents(tmp_path / "c", "t", "val")[0]


def _files(folder):
    return {f.name: f.read_bytes() for f in sorted(Path(folder).iterdir()) if f.is_file()}


def test_workers_give_identical_output(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_DOCS", 4)  # many small tasks, so the pool really interleaves
    _run(corpus, tmp_path / "one", workers=1, shard_tokens=97)
    _run(corpus, tmp_path / "two", workers=2, shard_tokens=97)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_small_shards_split_documents_across_files(corpus, tmp_path):
    manifest = _run(corpus, tmp_path / "out", shard_tokens=50)
    files = manifest["splits"]["train"]["files"]
    assert len(files) > 3 and files[0] == "t_train_000000.bin"
    sizes = [len(load_shard(tmp_path / "out" / f)) for f in files]
    assert sizes[:-1] == [50] * (len(files) - 1) and sum(sizes) == manifest["splits"]["train"]["tokens"]
    _run(corpus, tmp_path / "out", shard_tokens=10**6)  # a rerun with bigger shards removes the stale ones
    assert sorted(f.name for f in (tmp_path / "out").glob("t_train_*.bin")) == ["t_train_000000.bin"]


def test_at_least_one_val_document(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    manifest = prepare_text([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out", val_fraction=0.01, workers=1)
    assert manifest["splits"]["val"]["documents"] == 1 and manifest["splits"]["train"]["documents"] == 1


def test_one_document_goes_to_train_with_its_tail_held_out_as_val(tmp_path):
    """A single document cannot be split by documents: train gets it, val its last val_fraction of tokens; the two
    together are the document, and train.py finds both splits."""
    text = "The quick brown fox jumps over the lazy dog. " * 40
    (tmp_path / "one.txt").write_text(text)
    manifest = prepare_text([tmp_path / "one.txt"], tmp_path / "out", val_fraction=0.1, workers=1)
    tokens = [EOT_ID] + gpt2_encoding().encode_ordinary(text)
    train = load_shard(tmp_path / "out" / "text_train_000000.bin").tolist()
    val = load_shard(tmp_path / "out" / "text_val_000000.bin").tolist()
    assert train + val == tokens and len(val) == round(0.1 * len(tokens))
    assert manifest["splits"]["train"]["tokens"] == len(train) and manifest["splits"]["val"]["tokens"] == len(val)
    assert manifest["split_rule"].startswith("one document")
    (tmp_path / "two.txt").write_text("a")
    with pytest.raises(PrepareError, match="two.txt holds 1 token.*too few to hold out 0.1 of them as val"):
        prepare_text([tmp_path / "two.txt"], tmp_path / "out2", val_fraction=0.1, workers=1)
    assert not (tmp_path / "out2").exists()


def test_input_without_text_is_refused_and_leaves_nothing(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(PrepareError, match=r"empty.txt is empty \(0 bytes\): there is no text to tokenize"):
        main(["text", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "a" / "out"), "--val-fraction", "0"])
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(PrepareError, match="no documents in .*blank.jsonl"):
        main(["text", str(tmp_path / "blank.jsonl"), "--out", str(tmp_path / "a" / "out")])
    (tmp_path / "hollow.jsonl").write_text('{"text": ""}\n{"text": ""}\n')
    with pytest.raises(PrepareError, match="the 2 input document.* hold no text"):
        main(["text", str(tmp_path / "hollow.jsonl"), "--out", str(tmp_path / "a" / "out"), "--workers", "1"])
    assert not (tmp_path / "a").exists()  # no empty output folders left behind


def test_a_binary_file_is_named_and_the_output_is_left_as_it_was(tmp_path):
    """A binary file among the inputs: the error names it and the real problem; shards written before it was
    reached never replace the earlier output, and no folder or staging file is left."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"d{i:02d}.txt").write_text(f"document {i} " * 50)
    out = tmp_path / "out"
    prepare_text([docs], out, name="t", val_fraction=0.2, workers=1, shard_tokens=200)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (docs / "zz.txt").write_bytes(b"\x00\x9f\x92\x96 not text")
    with pytest.raises(PrepareError, match=r"zz.txt is not UTF-8 text \(byte 0x9f at offset 1: a binary file\?\); "
                                           "leave such files out of the folder's input with --glob"):
        prepare_text([docs], out, name="t", val_fraction=0.2, workers=1, shard_tokens=200, shuffle_seed=None)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    with pytest.raises(PrepareError, match=r"zz.txt is not UTF-8 text .*; data.prepare text reads UTF-8 text$"):
        main(["text", str(docs / "zz.txt"), str(docs / "d00.txt"), "--out", str(tmp_path / "new" / "out")])
    assert not (tmp_path / "new").exists()


def test_jsonl_without_the_field(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(PrepareError, match=r"x\.jsonl:2: no string field 'text'"):
        prepare_text([tmp_path / "x.jsonl"], tmp_path / "out", workers=1)
    (tmp_path / "y.jsonl").write_text('{"body": "one"}\n{"body": "two"}\n')
    manifest = prepare_text([tmp_path / "y.jsonl"], tmp_path / "out", text_field="body", val_fraction=0, workers=1)
    assert manifest["splits"]["train"]["documents"] == 2 and manifest["splits"]["val"]["documents"] == 0
    assert sorted(_documents(tmp_path / "out", "text", "train")[0]) == ["one", "two"]


@pytest.fixture
def many_files(tmp_path):
    """50 .jsonl files of 60 short records each: a sorted stream would read them one file at a time."""
    root = tmp_path / "many"
    root.mkdir()
    for f in range(50):
        (root / f"src{f:02d}.jsonl").write_text("".join(json.dumps({"text": f"source {f:02d} record {r}: " +
                                                                   "words " * (5 + (f * 7 + r) % 11)}) + "\n"
                                                        for r in range(60)))
    return root


def _first_percent_sources(out):
    """The source files of the documents that start in the first 1% of the train stream's tokens."""
    docs, n_tokens = _documents(out, "m", "train")
    sources, seen = set(), 0
    for text in docs:
        if seen >= n_tokens / 100:
            break
        sources.add(text.split(" record")[0])
        seen += len(gpt2_encoding().encode_ordinary(text)) + 1  # + the EOT before it
    return sources


def test_train_stream_starts_with_many_sources(many_files, tmp_path):
    prepare_text([many_files], tmp_path / "shuffled", name="m", val_fraction=0.05, workers=1)
    sources = _first_percent_sources(tmp_path / "shuffled")
    # ~30 documents drawn from 50 files: ~23 distinct files expected in a random order
    assert len(sources) >= 15, sources
    prepare_text([many_files], tmp_path / "sorted", name="m", val_fraction=0.05, workers=1, shuffle_seed=None)
    assert _first_percent_sources(tmp_path / "sorted") == {"source 00"}


def test_order_is_seeded_and_leaves_the_split_alone(corpus, tmp_path):
    texts = corpus[2]
    manifests = {s: _run(corpus, tmp_path / str(s), seed=3, shuffle_seed=s) for s in (0, 1)}
    assert manifests[0]["shuffle_seed"] == 0 and "order:<shuffle_seed>" in manifests[0]["order_rule"]
    train = {s: _documents(tmp_path / str(s), "t", "train")[0] for s in (0, 1)}
    val = {s: _documents(tmp_path / str(s), "t", "val")[0] for s in (0, 1)}
    assert train[0] != train[1] and sorted(train[0]) == sorted(train[1])  # another order, the same documents
    assert sorted(val[0]) == sorted(val[1])  # the val set is chosen by --seed alone
    # the order is the documented hash order of the document ids
    ids = sorted((d for d in texts if texts[d] in train[0]),
                 key=lambda d: (int.from_bytes(hashlib.blake2b(f"order:0:{d}".encode(), digest_size=8).digest(),
                                               "big"), d))
    assert train[0] == [texts[d] for d in ids]
    _run(corpus, tmp_path / "again", seed=3, shuffle_seed=0)
    assert _files(tmp_path / "again") == _files(tmp_path / "0")


def test_no_shuffle_keeps_sorted_order(corpus, tmp_path):
    manifest = _run(corpus, tmp_path / "out", val_fraction=0, shuffle_seed=None)
    assert manifest["shuffle_seed"] is None and manifest["order_rule"].startswith("sorted files")
    texts = corpus[2]
    expected = [texts[d] for d in sorted(texts, key=lambda d: (d.startswith("records"), d)) if ":" not in d]
    expected += [texts[f"records.jsonl:{n}"] for n in sorted(int(d.split(":")[1]) for d in texts if ":" in d)]
    assert _documents(tmp_path / "out", "t", "train")[0] == expected


def test_cli_shuffle_flags(corpus, tmp_path):
    main(["text", str(corpus[0]), "--out", str(tmp_path / "a"), "--name", "c", "--workers", "1",
          "--shuffle-seed", "5"])
    main(["text", str(corpus[0]), "--out", str(tmp_path / "b"), "--name", "c", "--workers", "1", "--no-shuffle"])
    assert json.loads((tmp_path / "a" / "c_manifest.json").read_text())["shuffle_seed"] == 5
    assert json.loads((tmp_path / "b" / "c_manifest.json").read_text())["shuffle_seed"] is None


def test_cli_text(corpus, tmp_path, capsys):
    main(["text", str(corpus[0]), "--out", str(tmp_path / "out"), "--name", "cli", "--val-fraction", "0.2",
          "--workers", "1"])
    assert "train: " in capsys.readouterr().out
    assert (tmp_path / "out" / "cli_val_000000.bin").exists() and (tmp_path / "out" / "cli_manifest.json").exists()


def test_cli_missing_input(tmp_path):
    with pytest.raises(PrepareError, match="no such file or folder"):
        main(["text", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing is created before the inputs are known to be good


# ----------------------------------------------------------------------------------------------- pydocs


def test_pydocs_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "PYDOCS_CANDIDATES", (tmp_path / "python3", tmp_path / "python3.11"))
    with pytest.raises(PrepareError) as exc:
        main(["pydocs", "--out", str(tmp_path / "out")])
    assert PYDOCS_INSTALL == "apt-get update && apt-get install -y python3-doc" and PYDOCS_INSTALL in str(exc.value)
    assert "not installed" in str(exc.value) and str(tmp_path / "python3") in str(exc.value)
    with pytest.raises(PrepareError, match=f"--docs-dir {tmp_path / 'x'}: no such folder; the Python docs are not "
                                           "installed here either; install them with: apt-get"):
        main(["pydocs", "--out", str(tmp_path / "out"), "--docs-dir", str(tmp_path / "x")])
    assert not (tmp_path / "out").exists()


def test_a_missing_docs_dir_is_named_as_such(tmp_path):
    """An explicit --docs-dir that does not exist is that folder's problem, not a missing package."""
    installed = prepare.find_pydocs()
    if installed is None:
        pytest.skip(f"python3-doc not installed ({PYDOCS_INSTALL})")
    with pytest.raises(PrepareError) as exc:
        main(["pydocs", "--out", str(tmp_path / "out"), "--docs-dir", str(tmp_path / "no-docs")])
    assert str(exc.value) == (f"--docs-dir {tmp_path / 'no-docs'}: no such folder; leave --docs-dir out to use the "
                              f"installed ones in {installed}")


def test_pydocs_are_found_by_the_version_neutral_path_first(tmp_path, monkeypatch):
    assert prepare.PYDOCS_CANDIDATES[0] == Path("/usr/share/doc/python3/html/_sources")
    neutral, versioned = tmp_path / "python3" / "_sources", tmp_path / "python3.11" / "_sources"
    versioned.mkdir(parents=True)
    monkeypatch.setattr(prepare, "PYDOCS_CANDIDATES", (neutral, versioned))
    assert prepare.find_pydocs() == versioned
    neutral.mkdir(parents=True)
    assert prepare.find_pydocs() == neutral


@pytest.mark.skipif(not PYDOCS_DIR.is_dir(), reason=f"python3-doc not installed ({PYDOCS_INSTALL})")
def test_pydocs_subset(tmp_path):
    main(["pydocs", "--out", str(tmp_path), "--limit-files", "12", "--workers", "2"])
    manifest = json.loads((tmp_path / "pydocs_manifest.json").read_text())
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 12 and splits["val"]["documents"] >= 1
    first = sorted(PYDOCS_DIR.rglob("*.rst.txt"))[0].read_text()
    assert first in _documents(tmp_path, "pydocs", "train")[0] + _documents(tmp_path, "pydocs", "val")[0]


@pytest.mark.slow
@pytest.mark.skipif(not PYDOCS_DIR.is_dir(), reason=f"python3-doc not installed ({PYDOCS_INSTALL})")
def test_pydocs_full(tmp_path):
    manifest = prepare.prepare_pydocs(tmp_path)
    total = sum(s["tokens"] - s["documents"] for s in manifest["splits"].values())  # without the EOTs
    assert 3_000_000 < total < 4_500_000  # 3,553,730 with python3-doc 3.11 (497 documents)


# ----------------------------------------------------------------------------------------------- fineweb


class _FakeHub:
    """A loopback HTTP server with the two endpoints hf_hub_download needs: HEAD and GET on .../resolve/<rev>/<file>."""

    def __init__(self, repo_id="kjj0/fineweb10B-gpt2"):
        self.files, self.requests = {}, []
        prefix = f"/datasets/{repo_id}/resolve/main/"
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _head(self):
                hub.requests.append((self.command, self.path))
                body = hub.files.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
                self.end_headers()
                return body

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                body = self._head()
                if body is not None:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    hub = _FakeHub()
    for i, name in enumerate(prepare.fineweb_filenames(2)):
        write_shard(tmp_path / name, np.arange(100 + i) + i)
        hub.files[name] = (tmp_path / name).read_bytes()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def test_fineweb_names():
    assert prepare.fineweb_filenames(3) == ["fineweb_val_000000.bin", "fineweb_train_000001.bin",
                                            "fineweb_train_000002.bin", "fineweb_train_000003.bin"]


def test_fineweb_from_fake_hub(hub, tmp_path, capsys):
    out = tmp_path / "fw"
    main(["fineweb", "--train-shards", "2", "--out", str(out), "--source", hub.url])
    for name, body in hub.files.items():
        assert (out / name).read_bytes() == body
    assert ("GET", "/datasets/kjj0/fineweb10B-gpt2/resolve/main/fineweb_train_000002.bin") in hub.requests
    assert "3 shards, 303 tokens" in capsys.readouterr().out
    hub.requests.clear()
    main(["fineweb", "--train-shards", "2", "--out", str(out), "--source", hub.url])
    assert hub.requests == []  # valid shards are not fetched again


def test_fineweb_redownloads_a_corrupt_local_shard(hub, tmp_path):
    out = tmp_path / "fw"
    out.mkdir()
    (out / "fineweb_val_000000.bin").write_bytes(hub.files["fineweb_val_000000.bin"][:-2])  # truncated
    prepare.download_fineweb(out, train_shards=1, source=hub.url)
    assert (out / "fineweb_val_000000.bin").read_bytes() == hub.files["fineweb_val_000000.bin"]


def test_fineweb_rejects_a_bad_download(hub, tmp_path):
    hub.files["fineweb_train_000001.bin"] = b"<html>not a shard</html>" * 50
    with pytest.raises(PrepareError, match=r"fineweb_train_000001\.bin from dataset .* not a speedrun token shard"):
        prepare.download_fineweb(tmp_path / "fw", train_shards=1, source=hub.url)


def test_fineweb_missing_file_on_hub(hub, tmp_path):
    with pytest.raises(PrepareError, match=r"could not download fineweb_train_000003\.bin from dataset "
                                           r"kjj0/fineweb10B-gpt2 at http://127\.0\.0\.1"):
        prepare.download_fineweb(tmp_path / "fw", train_shards=3, source=hub.url)


def test_fineweb_fails_at_once_when_the_hub_cannot_be_reached(tmp_path):
    """Nothing listens at the endpoint (as offline: no route to the hub): one error at once, instead of
    huggingface_hub's retries, and no output folder, download cache or lock file left behind."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(PrepareError, match=f"cannot reach {url} .*needs a network.*--source FOLDER"):
        main(["fineweb", "--train-shards", "1", "--out", str(tmp_path / "fw" / "out"), "--source", url])
    assert time.monotonic() - start < 5 and not (tmp_path / "fw").exists()


def test_a_failed_download_leaves_no_cache_or_lock(hub, tmp_path):
    with pytest.raises(PrepareError, match="could not download fineweb_train_000003.bin"):
        prepare.download_fineweb(tmp_path / "fw", train_shards=3, source=hub.url)
    assert sorted(p.name for p in (tmp_path / "fw").iterdir()) == ["fineweb_train_000001.bin",
                                                                    "fineweb_train_000002.bin",
                                                                    "fineweb_val_000000.bin"]  # kept: a rerun resumes


def test_fineweb_from_local_folder(hub, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, body in hub.files.items():
        (mirror / name).write_bytes(body)
    paths = prepare.download_fineweb(tmp_path / "fw", train_shards=2, source=str(mirror))
    assert [p.read_bytes() for p in paths] == list(hub.files.values()) and hub.requests == []
    with pytest.raises(PrepareError, match="fineweb_train_000003.bin not found"):
        prepare.download_fineweb(tmp_path / "fw", train_shards=3, source=str(mirror))
