"""Where a result's script comes from: a folder of the track's results in a checkout (a git directory read at a
commit, or a plain copy) or on disk, its .py or the script text at the head of its log. Nothing is copied into this
repository; the text is read and handed on.
"""

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from . import BASELINE, RESULTS, TRACK


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def script_from_log(text: str) -> str:
    """A log's script: its text before the first line made only of '=' characters."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if re.fullmatch(r"=+", line.rstrip("\r\n")):
            return "".join(lines[:i])
    raise SystemExit("no line of '=' characters in the log: it holds no script")


########################################
#        Reading the reference         #
########################################

class Checkout:
    """The modded-nanogpt repository: a git directory (bare or a work tree) read at one commit, or a plain copy."""

    def __init__(self, path: str | None, commit: str | None):
        self.path, self.commit = path, None
        self.git = False
        if path is None:
            return
        probe = subprocess.run(["git", "-C", path, "rev-parse", "--git-dir"], capture_output=True, text=True)
        if probe.returncode == 0:
            self.git = True
            rev = subprocess.run(["git", "-C", path, "rev-parse", "--verify", f"{commit or 'HEAD'}^{{commit}}"],
                                 capture_output=True, text=True)
            if rev.returncode != 0:
                raise SystemExit(f"{path}: no commit {commit or 'HEAD'}")
            self.commit = rev.stdout.strip()
        elif commit:
            raise SystemExit(f"{path} is not a git directory: --commit cannot be read there")

    def read(self, rel: str) -> bytes | None:
        if self.git:
            out = subprocess.run(["git", "-C", self.path, "show", f"{self.commit}:{rel}"], capture_output=True)
            return out.stdout if out.returncode == 0 else None
        file = Path(self.path, rel)
        return file.read_bytes() if file.is_file() else None

    def listdir(self, rel: str) -> list[str] | None:
        if self.git:
            out = subprocess.run(["git", "-C", self.path, "ls-tree", "--name-only", f"{self.commit}:{rel}"],
                                 capture_output=True, text=True)
            return sorted(out.stdout.split("\n")[:-1]) if out.returncode == 0 else None
        folder = Path(self.path, rel)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None

    def export(self, rel: str, dest: Path):
        """Copy the folder rel (and what is under it) to dest/<its name>."""
        if self.git:
            data = subprocess.run(["git", "-C", self.path, "archive", f"{self.commit}:{rel}"], capture_output=True,
                                  check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(dest / Path(rel).name, filter="data")
        else:
            shutil.copytree(Path(self.path, rel), dest / Path(rel).name)


def results_table(readme: str) -> dict:
    """The track README's results table: folder (or log file for top-level logs) -> its row."""
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[0].isdigit():
            continue
        link = re.search(r"\]\((results/[^)]+)\)", cells[5])
        if not link:
            continue
        parts = link.group(1).split("/")
        key = parts[1]  # the folder, or the log file of a top-level log
        steps = re.match(r"\d+", cells[1])
        evidence = re.match(r"([\d.]+) \(n=(\d+)\)", cells[2])
        rows.setdefault(key, {
            "number": int(cells[0]), "steps": int(steps.group(0)) if steps else None,
            "mean_val_loss": float(evidence.group(1)) if evidence else None,
            "n": int(evidence.group(2)) if evidence else None, "evidence": cells[2],
            "log": link.group(1), "date": cells[4]})
    return rows


class Script:
    """The script to run: its text and where it came from."""

    def __init__(self, text: str, name: str, kind: str, rel: str, data: bytes, folder: str | None, table_row):
        self.text, self.name, self.kind, self.rel, self.data = text, name, kind, rel, data
        self.folder, self.table_row = folder, table_row
        self.disk_folder = None  # set when the script was read from a folder on disk

    def meta(self) -> dict:
        return {"file": self.rel, "source": self.kind, "file_git_blob": git_blob(self.data),
                "script_sha256": hashlib.sha256(self.text.encode()).hexdigest(),
                "script_git_blob": git_blob(self.text.encode())}


def pick(names: list[str], source: str | None, linked: str | None, where: str) -> tuple[str, str]:
    pys = [n for n in names if n.endswith(".py")]
    logs = [n for n in names if n.endswith(".txt")]
    if source in (None, "py") and len(pys) == 1:
        return pys[0], "py"
    if source == "py":
        raise SystemExit(f"{where}: {len(pys)} .py files ({pys}); name the file instead")
    if not logs:
        raise SystemExit(f"{where}: no .py and no .txt log")
    if linked in logs:
        return linked, "log"
    return logs[0], "log"


def locate(args, checkout: Checkout) -> Script:
    """The script named by --reference / --result."""
    if args.reference:
        data = Path(args.reference).read_bytes()
        return Script(data.decode(), Path(args.reference).name, "py", f"{TRACK}/{BASELINE}.py", data, None, None)
    target = args.result
    disk = Path(target)
    if disk.exists():  # a folder or a file on disk
        folder = disk if disk.is_dir() else disk.parent
        readme = folder.parent.parent / "README.md"
        table = results_table(readme.read_text()) if readme.is_file() else {}
        row = table.get(folder.name)
        if disk.is_dir():
            linked = Path(row["log"]).name if row else None
            name, kind = pick(sorted(p.name for p in disk.iterdir()), args.source, linked, str(disk))
            disk = disk / name
        else:
            kind = args.source or ("py" if disk.suffix == ".py" else "log")
        data = disk.read_bytes()
        text = data.decode() if kind == "py" else script_from_log(data.decode())
        is_baseline = disk.name == f"{BASELINE}.py"
        script = Script(text, disk.name, kind, str(disk), data, None if is_baseline else folder.name, row)
        script.disk_folder = folder
        return script
    if checkout.path is None:
        raise SystemExit(f"{target}: not on disk; name the repository with --checkout")
    readme = checkout.read(f"{TRACK}/README.md")
    table = results_table(readme.decode()) if readme else {}
    if target in (BASELINE, f"{BASELINE}.py"):
        rel = f"{TRACK}/{BASELINE}.py"
        data = checkout.read(rel)
        return Script(data.decode(), f"{BASELINE}.py", "py", rel, data, None, None)
    folder = target.rstrip("/").split("/")[-1]
    names = checkout.listdir(f"{RESULTS}/{folder}")
    if names is None:
        raise SystemExit(f"{RESULTS}/{folder}: no such folder in {checkout.path}")
    row = table.get(folder)
    linked = Path(row["log"]).name if row else None
    name, kind = pick(names, args.source, linked, f"{RESULTS}/{folder}")
    rel = f"{RESULTS}/{folder}/{name}"
    data = checkout.read(rel)
    text = data.decode() if kind == "py" else script_from_log(data.decode())
    return Script(text, name, kind, rel, data, folder, row)


########################################
#               Adapters               #
########################################
