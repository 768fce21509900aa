"""The repository stands alone: no file points at material outside it or narrates how the work was done, and a
GPU figure that was never measured says so in one fixed phrase."""

import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORBIDDEN = {
    r"shared/|PLATFORM\.md|STYLE\.md": "a file outside the repository",
    r"(?i)\bissues? ?#?\d+": "an issue number",
    r"(?i)\b(was|were) lent\b|\blent to\b": "the history of the work",
    r"(?i)\bhelper-\d": "the history of the work",
    r"(?i)\bunmeasured\b": "an unmeasured figure not stated as 'not yet measured on a GPU'",
}
THIS_FILE = "tests/test_repository.py"


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if name == THIS_FILE or name.endswith((".png", ".json", ".bin")):
            continue
        path = os.path.join(REPO, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield name, f.read()


def test_no_file_points_outside_the_repository_or_narrates_its_history():
    hits = []
    for name, text in tracked_text_files():
        for pattern, what in FORBIDDEN.items():
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{name}:{line}: {m.group(0)!r} ({what})")
    assert not hits, "\n".join(hits)


def test_the_patterns_catch_what_they_name():
    offending = ["see ../shared/PLATFORM.md", "as STYLE.md says", "fixed in issue 7", "issues #12", "none was lent",
                 "helper-3 measured", "unmeasured (no GPU)"]
    for text in offending:
        assert any(re.search(p, text) for p in FORBIDDEN), text
    for text in ["shared memory per block", "the issue is the stride", "not yet measured on a GPU"]:
        assert not any(re.search(p, text) for p in FORBIDDEN), text
