"""A second offline corpus of natural-language text for ``slimtrain bench --data``: the prose of
the Python Language Reference and library topics that ships with every CPython
(``pydoc_data.topics``, the text ``help("assert")`` shows: 79 topics, ~465,000 characters of
English), cut at paragraph breaks into documents of about 2,000 characters so that validation
holds out whole documents of a useful number.

    python benchmarks/python_docs_corpus.py /tmp/python-docs.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_CHARS = 2000


def documents(target: int = TARGET_CHARS):
    from pydoc_data.topics import topics

    for name in sorted(topics):
        piece: list[str] = []
        size = 0
        for paragraph in topics[name].split("\n\n"):
            piece.append(paragraph)
            size += len(paragraph) + 2
            if size >= target:
                yield name, "\n\n".join(piece)
                piece, size = [], 0
        if piece:
            yield name, "\n\n".join(piece)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "python-docs.jsonl")
    count = chars = 0
    with open(out, "w") as f:
        for name, text in documents():
            f.write(json.dumps({"text": text, "topic": name}) + "\n")
            count, chars = count + 1, chars + len(text)
    print(f"{out}: {count} documents, {chars:,} characters (pydoc_data.topics, Python "
          f"{sys.version.split()[0]})")


if __name__ == "__main__":
    main()
