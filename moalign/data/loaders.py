"""Foreign preference data in, :class:`~moalign.data.schema.PreferenceRow` out.

Local files only: JSON Lines, JSON (an array of objects, or JSON Lines as ``datasets`` writes
``.json``), CSV or Parquet. Every row keeps its source name and an id that points back to the record
it came from (``<source>:<record index>`` unless the record has its own id), for lineage.

A record that cannot become a pair (not JSON, not UTF-8, a missing field, a score out of range) is
*rejected* with its place in the file (``data.jsonl:7``, ``data.json record 3``) and its reason,
and the others load; the annotate stage writes the rejected ones to ``rejected.jsonl`` and fails
only when their share passes ``validate.max_quarantine_fraction``. A file that cannot be read at
all (missing, empty, an unknown type, a JSON document cut short) is an error naming the file.

Formats (``data.format`` in params.yaml):

``hf_preference``
    TRL's preference format: ``prompt``, ``chosen``, ``rejected`` as strings, or conversational
    (lists of ``{"role", "content"}`` messages). With no ``prompt`` column the shared prefix of the
    two conversations is the prompt (implicit prompt); with one, ``chosen``/``rejected`` may hold
    the completion alone or repeat the prompt's turns first, as ``ultrafeedback_binarized`` does.
    No scores: the judge scores every dimension.
``helpsteer2``
    One response per record (``prompt``, ``response``, ``helpfulness`` ... ``verbosity`` on 0-4).
    Responses to the same prompt are paired: the higher mean score over the configured dimensions
    present in the file is chosen (as the AMoPO paper builds its HelpSteer2 pairs), or the higher
    score on one dimension (``data.pair_by``). Ties are counted, never paired.
``ultrafeedback``
    ``instruction`` (or ``prompt``) and ``completions``, each with a ``response`` and per-aspect
    ``annotations`` (``{"helpfulness": {"Rating": "4"}, ...}``, 1-5, ``N/A`` allowed). The best
    completion (mean rating) is paired against the worst.
``amopo``
    The AMoPO authors' files: ``prompt``, and ``chosen`` / ``rejected`` objects holding
    ``response`` and the per-dimension scores (flat, or under ``scores``), on 0-4.

Scores are mapped to moalign's 1-5 scale by the format's range (0-4 formats shift by one), or by
``data.score_scale`` where a file's range differs; a score outside the range rejects its record.
Dimensions the file does not score are left for the judge (:func:`moalign.annotation.fill_missing_scores`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moalign.data.schema import SCORE_MAX, SCORE_MIN, PreferenceRow, ScoredResponse

FORMATS = ("hf_preference", "helpsteer2", "ultrafeedback", "amopo")

#: the native score range of each format; mapped linearly onto 1-5
SCORE_RANGES = {"helpsteer2": (0, 4), "ultrafeedback": (1, 5), "amopo": (0, 4), "hf_preference": (1, 5)}

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")

#: how much of an unreadable line a rejection keeps, so that rejected.jsonl stays readable
_RAW_KEPT = 2000


class LoaderError(ValueError):
    """A file or a record that cannot become preference rows; the message names the file and the line or record."""


@dataclass(frozen=True)
class Record:
    index: int  # position among the file's records: the row id's default, stable across reruns
    where: str  # "data.jsonl:7", "data.json record 3", "data.parquet row 3"
    value: Any


@dataclass(frozen=True)
class Rejected:
    """A record left out, with its place in the file and why; ``content`` is what the file held."""

    where: str
    reason: str
    content: Any = None

    def as_dict(self) -> dict:
        return {"where": self.where, "reason": self.reason, "content": self.content}


@dataclass
class LoadStats:
    records: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count (prompts that yield no pair)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def rejected_fraction(self) -> float:
        return len(self.rejected) / self.records if self.records else 0.0

    def as_dict(self) -> dict:
        return {"records": self.records, "pairs": self.pairs, "skipped": dict(sorted(self.skipped.items())),
                "rejected": len(self.rejected)}


@dataclass(frozen=True)
class _Options:
    dimensions: tuple[str, ...]
    eval_fraction: float
    pair_by: str
    reverse: frozenset[str]
    scale: tuple[float, float]


# ------------------------------------------------------------------------------------------------
# reading: records with their place in the file, or rejections
#
# Hand-written on the standard library rather than ``datasets``' local builders: those infer one
# type per column over the whole file, so an answer "19" becomes the integer 19 (and "02134" loses
# its zero), one record of another shape fails the whole file with an Arrow error that names no
# line, and a bad byte is reported without its place. Here every value stays as the file wrote it.


def read_records(path: str | os.PathLike[str]) -> tuple[list[Record], list[Rejected]]:
    """The records of a local file, and the ones that could not be read (a line that is not JSON or
    not UTF-8, a record that is not an object). Raises :class:`LoaderError` for a file that cannot
    be read at all, naming it (and the line, where there is one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (data.path)")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise LoaderError(f"{path}: unknown file type {path.suffix!r}; allowed: {', '.join(FILE_TYPES)}")
    if suffix == ".parquet":
        entries = _parquet_records(path)
    else:
        data = path.read_bytes()
        if not data.strip():
            raise LoaderError(f"{path}: the file is empty: no records")
        if suffix == ".csv":
            entries = _csv_records(path, data)
        elif suffix == ".json" and data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            entries = _json_array_records(path, data)
        else:  # .jsonl, and .json holding JSON Lines (as datasets' to_json writes it)
            entries = _json_lines_records(path, data)
    records: list[Record] = []
    rejected: list[Rejected] = []
    for entry in entries:
        if isinstance(entry, Rejected):
            rejected.append(entry)
        elif not isinstance(entry.value, Mapping):
            rejected.append(Rejected(entry.where, f"{entry.where}: expected an object, got {type(entry.value).__name__}",
                                     entry.value))
        else:
            records.append(entry)
    if not records and not rejected:
        raise LoaderError(f"{path}: no records (blank lines, or a header alone)")
    return records, rejected


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LoaderError(f"{path}:{line}: not valid UTF-8 ({error.reason}); re-save the file as UTF-8") from None


def _json_lines_records(path: Path, data: bytes) -> Iterator[Record | Rejected]:
    index = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield Rejected(where, f"{where}: not valid UTF-8 (byte {error.start} of the line: {error.reason})",
                           raw.decode("utf-8", "replace")[:_RAW_KEPT])
        else:
            try:
                yield Record(index, where, json.loads(line))
            except json.JSONDecodeError as error:
                yield Rejected(where, f"{where}: not valid JSON (column {error.colno}: {error.msg}); a line cut short?",
                               line[:_RAW_KEPT])
        index += 1


def _json_array_records(path: Path, data: bytes) -> Iterator[Record | Rejected]:
    try:
        document = json.loads(_decode(path, data))
    except json.JSONDecodeError as error:
        raise LoaderError(f"{path}:{error.lineno}: not valid JSON (column {error.colno}: {error.msg}); "
                          "the file cut short?") from None
    for index, value in enumerate(document):
        yield Record(index, f"{path} record {index}", value)


def _csv_records(path: Path, data: bytes) -> Iterator[Record | Rejected]:
    # an empty cell is a missing value: CSV has no other way to leave a field out
    reader = csv.reader(io.StringIO(_decode(path, data), newline=""))
    try:
        header = next(reader)
        line = reader.line_num
        for index, cells in enumerate(reader):
            where, line = f"{path}:{line + 1}", reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(header):
                yield Rejected(where, f"{where}: {len(cells)} fields but the header names {len(header)}", cells)
                continue
            yield Record(index, where, {key: cell if cell != "" else None for key, cell in zip(header, cells, strict=False)})
    except csv.Error as error:
        raise LoaderError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None


def _parquet_records(path: Path) -> Iterator[Record | Rejected]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several types for a damaged file; name the file
        raise LoaderError(f"{path}: cannot be read as Parquet ({error})") from None
    for index, row in enumerate(rows):
        yield Record(index, f"{path} row {index}", row)


# ------------------------------------------------------------------------------------------------
# fields


def to_scale(value: Any, native: tuple[float, float], where: str, reverse: bool = False) -> int:
    """A native score as an int on 1-5 (5 best; ``reverse`` when the file's high score is the worse
    answer, as HelpSteer2's verbosity); ``where`` names the record and field in errors."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LoaderError(f"{where}: score {value!r} is not a number") from None
    low, high = native
    if not low <= number <= high:
        raise LoaderError(f"{where}: score {value!r} outside the format's range {low:g}-{high:g} "
                          "(data.score_scale sets another)")
    if reverse:
        number = high - (number - low)
    return round(SCORE_MIN + (number - low) * (SCORE_MAX - SCORE_MIN) / (high - low))


def split_for(prompt: str, eval_fraction: float) -> str:
    """Deterministic split by prompt text, so both answers of a prompt (and its duplicates) stay together."""
    bucket = int(hashlib.sha256(prompt.strip().encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if bucket < eval_fraction else "train"


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _required(record: Mapping[str, Any], key: str, where: str) -> Any:
    if not _present(record.get(key)):
        present = sorted(name for name, value in record.items() if _present(value))
        raise LoaderError(f"{where}: missing field {key!r} (the record has {', '.join(map(repr, present[:8])) or 'none'})")
    return record[key]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LoaderError(f"{where}: expected text, got {type(value).__name__}")
    return value


def _messages(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise LoaderError(f"{where}: expected a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise LoaderError(f"{where}[{i}]: a message needs 'role' and 'content'")
        _text(message["content"], f"{where}[{i}].content")
    return value


def _messages_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """A conversation as one prompt: a single user turn is its content, longer ones keep the roles."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _same_turn(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


def _after_prompt(side: list, prompt: list, where: str) -> list:
    """A side's completion: the turns after the prompt's, where the side repeats them (as
    ultrafeedback_binarized does), else the side as it is."""
    n = len(prompt)
    if len(side) > n and all(_same_turn(a, b) for a, b in zip(side[:n], prompt, strict=True)):
        return side[n:]
    if side[0]["role"] != "assistant":
        raise LoaderError(f"{where}: starts with a {side[0]['role']!r} turn that is not the prompt's")
    return side


def _hf_pair(record: Mapping[str, Any], where: str) -> tuple[str, str, str]:
    chosen, rejected = _required(record, "chosen", where), _required(record, "rejected", where)
    prompt = record.get("prompt")
    if isinstance(chosen, str) or isinstance(rejected, str):
        if not _present(prompt):
            raise LoaderError(f"{where}: missing field 'prompt' (plain-text pairs need one)")
        prompt = prompt if isinstance(prompt, str) else _messages_text(_messages(prompt, f"{where}: prompt"))
        return prompt, _text(chosen, f"{where}: chosen"), _text(rejected, f"{where}: rejected")
    chosen, rejected = _messages(chosen, f"{where}: chosen"), _messages(rejected, f"{where}: rejected")
    if not _present(prompt):  # implicit prompt: the shared prefix of the two conversations
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        turns, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not turns:
            raise LoaderError(f"{where}: no 'prompt' field and no turns shared by 'chosen' and 'rejected'")
    else:
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, f"{where}: prompt")
        chosen = _after_prompt(chosen, turns, f"{where}: chosen")
        rejected = _after_prompt(rejected, turns, f"{where}: rejected")
    answers = []
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if len(side) != 1 or side[0]["role"] != "assistant":
            raise LoaderError(f"{where}: {key}: expected one assistant message after the prompt, got {len(side)}")
        answers.append(side[0]["content"])
    return _messages_text(turns), answers[0], answers[1]


def _scores(record: Mapping[str, Any], options: _Options, where: str, aliases=None) -> dict[str, int]:
    """The configured dimensions the record scores (by name or alias), on 1-5."""
    scores = {}
    for dimension in options.dimensions:
        for key in (dimension, *(aliases or {}).get(dimension, ())):
            if _present(record.get(key)):
                scores[dimension] = to_scale(record[key], options.scale, f"{where}: {key}", dimension in options.reverse)
                break
    return scores


# ------------------------------------------------------------------------------------------------
# formats: each turns the readable records into rows, rejecting the records it cannot use


def _each(records: Sequence[Record], stats: LoadStats, parse: Callable[[Record], Any]) -> Iterator[tuple[Record, Any]]:
    """``parse`` applied to every record; one that raises :class:`LoaderError` is rejected, not fatal."""
    for record in records:
        try:
            yield record, parse(record)
        except LoaderError as error:
            stats.rejected.append(Rejected(record.where, str(error), record.value))


def load_hf_preference(records, source: str, options: _Options, stats: LoadStats):
    for record, (prompt, chosen, rejected) in _each(records, stats, lambda r: _hf_pair(r.value, r.where)):
        yield record, _row(record, source, prompt, (chosen, {}), (rejected, {}), options.eval_fraction)


def load_helpsteer2(records, source: str, options: _Options, stats: LoadStats):
    def parse(record: Record):
        value, where = record.value, record.where
        prompt = _text(_required(value, "prompt", where), f"{where}: prompt")
        response = _text(_required(value, "response", where), f"{where}: response")
        scores = _scores(value, options, where)
        if not scores:
            raise LoaderError(f"{where}: none of the dimensions {list(options.dimensions)} is scored")
        if options.pair_by != "mean" and options.pair_by not in scores:
            raise LoaderError(f"{where}: no {options.pair_by} score, which data.pair_by pairs on")
        return prompt, response, scores

    by_prompt: dict[str, list[tuple[Record, str, dict[str, int]]]] = defaultdict(list)
    for record, (prompt, response, scores) in _each(records, stats, parse):
        by_prompt[prompt].append((record, response, scores))
    for prompt, answers in by_prompt.items():
        pair = _pair_answers(answers, options, stats, too_few="single_response")
        if pair is not None:
            (first, best, best_scores), (_, worst, worst_scores) = pair
            # the pair is no record's own: its id is the best answer's position, whatever that record says
            record = Record(first.index, first.where, {})
            yield record, _row(record, source, prompt, (best, best_scores), (worst, worst_scores), options.eval_fraction)


def _pair_answers(answers, options: _Options, stats: LoadStats, too_few: str):
    """Best against worst of one prompt's scored answers, or None with the reason counted."""
    if len(answers) < 2:
        stats.skipped[too_few] += 1
        return None

    def key(answer):
        scores = answer[2]
        return sum(scores.values()) / len(scores) if options.pair_by == "mean" else scores[options.pair_by]

    ranked = sorted(enumerate(answers), key=lambda item: (-key(item[1]), item[0]))
    best, worst = ranked[0][1], ranked[-1][1]
    if key(best) == key(worst) or best[1].strip() == worst[1].strip():
        stats.skipped["tied_scores"] += 1
        return None
    return best, worst


#: UltraFeedback's aspect names for moalign's dimensions
ULTRAFEEDBACK_ALIASES = {"correctness": ("truthfulness",), "harmlessness": ("honesty",)}


def load_ultrafeedback(records, source: str, options: _Options, stats: LoadStats):
    def parse(record: Record):
        value, where = record.value, record.where
        prompt_key = "instruction" if _present(value.get("instruction")) else "prompt"
        if not _present(value.get(prompt_key)):
            raise LoaderError(f"{where}: missing field 'instruction'")
        prompt = _text(value[prompt_key], f"{where}: {prompt_key}")
        completions = value.get("completions")
        if not isinstance(completions, list):
            raise LoaderError(f"{where}: missing field 'completions' (a list)")
        answers = []
        for c, completion in enumerate(completions):
            cwhere = f"{where}: completions[{c}]"
            if not isinstance(completion, Mapping):
                raise LoaderError(f"{cwhere}: expected an object with 'response' and 'annotations'")
            ratings = {
                aspect: rating.get("Rating") if isinstance(rating, Mapping) else rating
                for aspect, rating in (completion.get("annotations") or {}).items()
            }
            ratings = {k: v for k, v in ratings.items() if v != "N/A"}
            scores = _scores(ratings, options, f"{cwhere}.annotations", ULTRAFEEDBACK_ALIASES)
            if scores and (options.pair_by == "mean" or options.pair_by in scores):
                answers.append((c, _text(completion.get("response"), f"{cwhere}.response"), scores))
        return prompt, answers

    for record, (prompt, answers) in _each(records, stats, parse):
        pair = _pair_answers(answers, options, stats, too_few="fewer_than_two_rated_completions")
        if pair is not None:
            (_, best, best_scores), (_, worst, worst_scores) = pair
            yield record, _row(record, source, prompt, (best, best_scores), (worst, worst_scores),
                               options.eval_fraction)


def load_amopo(records, source: str, options: _Options, stats: LoadStats):
    def parse(record: Record):
        value, where = record.value, record.where
        prompt = _text(_required(value, "prompt", where), f"{where}: prompt")
        sides = []
        for key in ("chosen", "rejected"):
            side = value.get(key)
            if not isinstance(side, Mapping) or not _present(side.get("response")):
                raise LoaderError(f"{where}: {key}: expected an object with 'response' and scores")
            scored = side.get("scores") if isinstance(side.get("scores"), Mapping) else side
            sides.append((_text(side["response"], f"{where}: {key}.response"),
                          _scores(scored, options, f"{where}: {key}")))
        return prompt, sides

    for record, (prompt, (chosen, rejected)) in _each(records, stats, parse):
        yield record, _row(record, source, prompt, chosen, rejected, options.eval_fraction)


def _row(record: Record, source, prompt, chosen, rejected, eval_fraction) -> PreferenceRow:
    own_id = record.value.get("id")
    pair_id = f"{source}:{own_id if _present(own_id) else record.index}"
    split = record.value.get("split")
    return PreferenceRow(
        id=pair_id,
        source=source,
        prompt_id=hashlib.sha256(prompt.strip().encode()).hexdigest()[:16],
        split=split if split in ("train", "eval") else split_for(prompt, eval_fraction),
        prompt=prompt,
        chosen=ScoredResponse(text=chosen[0], scores=chosen[1]),
        rejected=ScoredResponse(text=rejected[0], scores=rejected[1]),
    )


_LOADERS = {
    "hf_preference": load_hf_preference,
    "helpsteer2": load_helpsteer2,
    "ultrafeedback": load_ultrafeedback,
    "amopo": load_amopo,
}


def load_pairs(
    path: str | os.PathLike[str],
    fmt: str,
    dimensions: Sequence[str],
    *,
    source: str | None = None,
    eval_fraction: float = 0.1,
    pair_by: str = "mean",
    reverse_scores: Sequence[str] = (),
    score_scale: Sequence[float] | None = None,
    max_pairs: int | None = None,
) -> tuple[list[PreferenceRow], LoadStats]:
    """Preference rows from a local file in ``fmt``, and the stats, which list every record left out
    (``stats.rejected``) with its place and reason.

    ``pair_by`` is ``mean`` or a dimension (helpsteer2, ultrafeedback); ``reverse_scores`` names the
    dimensions whose file scores rank the other way; ``score_scale`` (low, high) replaces the
    format's score range; ``max_pairs`` keeps the first N pairs. A second record with an id already
    seen is rejected.
    """
    if fmt not in _LOADERS:
        raise LoaderError(f"unknown data.format {fmt!r}; allowed: {', '.join(FORMATS)}")
    scale = tuple(score_scale) if score_scale is not None else SCORE_RANGES[fmt]
    if len(scale) != 2 or not scale[0] < scale[1]:
        raise LoaderError(f"data.score_scale must be [low, high] with low < high, got {list(scale)}")
    source = source or Path(path).stem
    records, unreadable = read_records(path)
    stats = LoadStats(records=len(records) + len(unreadable), rejected=list(unreadable))
    options = _Options(tuple(dimensions), eval_fraction, pair_by, frozenset(reverse_scores), (scale[0], scale[1]))
    rows: list[PreferenceRow] = []
    first_seen: dict[str, str] = {}
    for record, row in _LOADERS[fmt](records, source, options, stats):
        if row.id in first_seen:
            stats.rejected.append(Rejected(record.where, f"{record.where}: pair id {row.id!r} was already used at "
                                           f"{first_seen[row.id]} (records' 'id' fields must be unique)", record.value))
            continue
        first_seen[row.id] = record.where
        rows.append(row)
    rows = rows[:max_pairs]
    stats.pairs = len(rows)
    return rows, stats
