"""IFBench verifiers, loader and scores (moalign.evaluation.ifbench)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from moalign.evaluation.ifbench import (
    APPROXIMATE,
    DEVIATIONS,
    TEST_FILE,
    UNVERIFIABLE,
    VERIFIERS,
    IFBenchFormatError,
    IFBenchPrompt,
    evaluate_response,
    ifbench_scores,
    load_ifbench,
    loose_variants,
    split_sentences,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "benchmarks" / "ifbench"
ITEMS = load_ifbench(DATA_DIR / TEST_FILE)


def real_kwargs(instruction_id: str, nth: int = 0) -> dict:
    """The kwargs of the ``nth`` use of an instruction in the shipped file."""
    found = [
        kw
        for item in ITEMS
        for iid, kw in zip(item.instruction_ids, item.kwargs, strict=True)
        if iid == instruction_id
    ]
    return dict(found[nth])


# --------------------------------------------------------------------------------------
# the shipped file
# --------------------------------------------------------------------------------------


def test_shipped_file_loads_with_every_id_covered():
    assert len(ITEMS) == 294
    ids = {iid for item in ITEMS for iid in item.instruction_ids}
    assert len(ids) == 57
    assert ids <= set(VERIFIERS) | set(UNVERIFIABLE)
    assert not ids & set(UNVERIFIABLE)  # all 57 are implemented
    assert not set(VERIFIERS) & set(UNVERIFIABLE)
    assert set(DEVIATIONS) <= set(VERIFIERS)
    assert set(APPROXIMATE) <= set(VERIFIERS)


def test_the_caller_says_where_the_file_is():
    # no default path: the library must not know the repository's layout
    assert inspect.signature(load_ifbench).parameters["path"].default is inspect.Parameter.empty


def test_shipped_kwargs_have_nones_dropped_and_the_licence_is_beside_it():
    assert all(
        v is not None for item in ITEMS for kw in item.kwargs for v in kw.values()
    )
    assert all(len(i.kwargs) == len(i.instruction_ids) for i in ITEMS)
    assert "Apache License" in (DATA_DIR / "LICENSE").read_text()


def test_every_verifier_has_a_pass_and_a_fail_case():
    assert {case[0] for case in CASES} == set(VERIFIERS)


# --------------------------------------------------------------------------------------
# a passing and a failing answer per verifier, kwargs from the file where they matter
# --------------------------------------------------------------------------------------

KW_MULTI = real_kwargs("count:keywords_multiple")
N_NUMBERS = real_kwargs("count:numbers")["N"]
N_NAMES = real_kwargs("count:person_names")["N"]
N_PRON = real_kwargs("count:pronouns")["N"]
N_UNIQUE = real_kwargs("count:unique_word_count")["N"]
KW_RANGE = real_kwargs("count:word_count_range")
N_JA = real_kwargs("count:words_japanese")["N"]
SEP = real_kwargs("format:list")["sep"]
SMALL_INC = int(real_kwargs("sentence:increment")["small_n"])
KW_SENT = real_kwargs("sentence:keyword")
KW_POS = real_kwargs("words:keywords_specific_position")
REPEATS = real_kwargs("words:repeats")["small_n"]
WORDPOS = real_kwargs("words:words_position")["keyword"]
NAMES = (
    "Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte "
    "Alexander Amelia Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace"
).split()


def keywords_text(times: tuple[int, ...]) -> str:
    names = [KW_MULTI[f"keyword{i}"] for i in range(1, 6)]
    return (
        " and ".join(" ".join([n] * t) for n, t in zip(names, times, strict=True)) + "."
    )


def japanese_text(every: int, ok: bool) -> str:
    words = [
        "日本語" if ok and i % every == 0 else "word" for i in range(1, 3 * every + 1)
    ]
    return " ".join(words)


CITY_HEADER = "ID,Country,City,Year,Count\n"
CITY_ROWS = "".join(f"{i},France,Paris,2020,{i * 10}\n" for i in range(1, 8))
QUOTE_ROWS = [
    ["StudentID", "Subject", "Grade", "Semester", "Score"],
    ["1", "Math", "A", "Fall", "95"],
    ["2", "Art", "B", "Spring", "88"],
    ["3", "History", "A", "Fall", "91"],
]


def tab_csv(rows, quote_all=True):
    return "\n".join(
        "\t".join(f'"{f}"' if quote_all or j else f for j, f in enumerate(r))
        for r in rows
    )


PRODUCT_HEADER = "ProductID,Category,Brand,Price,Stock\n"
PRODUCT_ROWS = [f"{i},Tools,Acme,{i}.99,{i * 3}" for i in range(1, 15)]
CAPITALS = (
    "Reykjavík, Helsinki, Oslo, Tallinn, Stockholm, Riga, Moscow, Copenhagen, Vilnius, "
    "Minsk, Dublin, Berlin, Amsterdam, Warsaw, London, Brussels, Prague, Luxembourg, "
    "Paris, Vienna, Bratislava, Budapest, Vaduz, Chisinau, Bern, Ljubljana, Zagreb"
)


def mcq(options_per_question: int = 5, preface: str = "") -> str:
    questions = [
        "Who painted Guernica?",
        "Which movement did Dali belong to?",
        "Which city hosted the first Futurist manifesto?",
        "Which artist is best known for drip painting in the nineteen forties?",
    ]
    blocks = []
    for n, q in enumerate(questions, start=1):
        opts = "\n".join(
            f"{'ABCDE'[k]}) Option {k}" for k in range(options_per_question)
        )
        blocks.append(f"Question {n}: {q}\n{opts}")
    return preface + "\n\n".join(blocks)


COUNTRIES = ["Zimbabwe"] + sorted((f"Country{i:03d}" for i in range(60)), reverse=True)
ALPHA_STORY = " ".join(
    f"{c.upper()}{c}{c} went home." for c in "abcdefghijklmnopqrstuvwxyz"
)


def sentences_with_counts(counts: list[int]) -> str:
    return " ".join(" ".join(["word"] * c) + "." for c in counts)


def keyword_in_sentence(total: int, at: int, word: str) -> str:
    return " ".join(
        f"This sentence has the {word} here." if i == at else "This is filler."
        for i in range(1, total + 1)
    )


def keyword_at_position(n: int, m: int, word: str) -> str:
    target = " ".join(["filler"] * (m - 1) + [word] + ["tail"]) + "."
    return " ".join(["Short one."] * (n - 1) + [target, "The end."])


REPEAT_CHANGE = real_kwargs("repeat:repeat_change")["prompt_to_repeat"]
# words 3..6 of "explain the context, code and theory behind the paper ..."
REPEAT_SPAN = real_kwargs("repeat:repeat_span")
OVERLAP_REF = {"reference_text": "the cat sat on the mat today", "percentage": 50}

# (instruction id, kwargs, an answer that follows it, an answer that does not)
CASES = [
    (
        "count:conjunctions",
        real_kwargs("count:conjunctions"),
        "I came and saw, but left; for rain fell, nor sun shone, or so, yet fine.",
        "And and AND, and.",
    ),
    (
        "count:keywords_multiple",
        KW_MULTI,
        keywords_text((1, 2, 3, 5, 7)),
        keywords_text((1, 2, 3, 5, 6)),
    ),
    (
        "count:numbers",
        {"N": N_NUMBERS},
        " ".join(f"{i}.5" for i in range(N_NUMBERS)) + " items.",
        " ".join(str(i) for i in range(N_NUMBERS + 1)),
    ),
    (
        "count:person_names",
        {"N": N_NAMES},
        ", ".join(NAMES[:N_NAMES]),
        ", ".join(NAMES[: N_NAMES - 1] + ["emma"]),
    ),
    (
        "count:pronouns",
        {"N": N_PRON},
        " ".join(["It's"] * N_PRON),
        " ".join(["she"] * (N_PRON - 1) + ["cat"]),
    ),
    (
        "count:punctuation",
        {},
        "Wait?! Yes, really: fine; done. Wow! Why?",
        "Wait?! Yes, really: fine; done.",
    ),
    (
        "count:unique_word_count",
        {"N": N_UNIQUE},
        " ".join(f"w{i}," for i in range(N_UNIQUE)),
        " ".join(f"w{i}" for i in range(N_UNIQUE - 1)) + " w0 W0 -- ...",
    ),
    (
        "count:word_count_range",
        KW_RANGE,
        "word " * KW_RANGE["min_words"],
        "word " * (KW_RANGE["max_words"] + 1),
    ),
    (
        "count:words_japanese",
        {"N": N_JA},
        japanese_text(N_JA, True),
        japanese_text(N_JA, False),
    ),
    ("custom:character_reverse", {}, ".elgae dlab ehT", "The bald eagle."),
    (
        "custom:csv_city",
        {},
        CITY_HEADER + CITY_ROWS,
        CITY_HEADER + "".join(CITY_ROWS.splitlines(keepends=True)[:6]),
    ),
    (
        "custom:csv_quotes",
        {},
        tab_csv(QUOTE_ROWS),
        tab_csv(QUOTE_ROWS, quote_all=False),
    ),
    (
        "custom:csv_special_character",
        {},
        PRODUCT_HEADER
        + "\n".join(PRODUCT_ROWS[:13] + ['14,Tools,"Acme & Sons",9.99,4']),
        PRODUCT_HEADER + "\n".join(PRODUCT_ROWS),
    ),
    (
        "custom:date_format_list",
        {},
        "1796-04-12, 1805-12-02, 1815-06-18",
        "1805-12-02, 1805-02-30",
    ),
    (
        "custom:european_capitals_sort",
        {},
        CAPITALS,
        CAPITALS.replace("Oslo, Tallinn", "Tallinn, Oslo"),
    ),
    ("custom:mcq_count_length", {}, mcq(), mcq(preface="Here are your questions:\n")),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", "7, 14, 21, 28, 35, 42, 49"),
    ("custom:reverse_newline", {}, "\n".join(COUNTRIES), "\n".join(sorted(COUNTRIES))),
    (
        "custom:sentence_alphabet",
        {},
        ALPHA_STORY,
        ALPHA_STORY.replace("Bbb went home.", "Xbb went home."),
    ),
    (
        "custom:word_reverse",
        {},
        "Eagle bald the is symbol national the.",
        "The bald eagle is the national symbol.",
    ),
    (
        "format:emoji",
        {},
        "Hello there 😀. How are you 🙂? Great. 👍",
        "Hello there 😀. How are you?",
    ),
    ("format:line_indent", {}, "Stairs\n  go\n    up", "Stairs\n  go\n  flat"),
    (
        "format:list",
        {"sep": SEP},
        f"{SEP} apples\n{SEP} pears",
        f"apples {SEP} pears {SEP} plums",
    ),
    ("format:newline", {}, "Hello\nbig\nworld.", "Hello big\nworld."),
    (
        "format:no_bullets_bullets",
        {},
        "Springs oscillate. Damping slows them.\n* Undamped: x'' = -kx\n* Damped\n",
        "Springs oscillate.\n* Undamped\n* Damped",
    ),
    ("format:no_whitespace", {}, "No,notallsetsaresets.", "No, not all."),
    (
        "format:options",
        real_kwargs("format:options"),
        "Maybe.",
        "Maybe, because history is complex.",
    ),
    (
        "format:output_template",
        {},
        "My Answer: yes My Conclusion: so Future Outlook: bright",
        "My Conclusion: so My Answer: yes Future Outlook: bright",
    ),
    ("format:parentheses", {}, "(a [b {c (d [e])}])", "(a [b {c (d)}])"),
    (
        "format:quote_unquote",
        {},
        'He said "hello" to greet us. She replied "bye" to leave.',
        'He said "hello" "bye" and left.',
    ),
    (
        "format:quotes",
        {},
        'He said "she told me \'he shouted "run" twice\' once" today.',
        "He said \"she told me 'run' once\" today.",
    ),
    (
        "format:sub-bullets",
        {},
        "* Light\n  - less photosynthesis\n* Heat\n  - cooling",
        "* Light\n  - less photosynthesis\n* Heat",
    ),
    (
        "format:thesis",
        {},
        "<i>Encryption keeps streams private.</i>\nIt works so.",
        "<i>Encryption keeps streams private.</i>",
    ),
    (
        "format:title_case",
        {},
        "A Tale of Two Cities In Post-War Ohio",
        "A tale of two cities",
    ),
    (
        "ratio:overlap",
        OVERLAP_REF,
        "the cat sat on the mat zz yy xx ww",
        "the cat sat on zz yy xx ww vv uu",
    ),
    ("ratio:sentence_balance", {}, "It rains. Does it? Wow!", "It rains. Does it?"),
    ("ratio:sentence_type", {}, "It rains. It pours. Why?", "It rains. Why?"),
    (
        "ratio:sentence_words",
        {},
        "Cats nap. Dogs run. Owls fly.",
        "Cats nap. Dogs run. Cats fly.",
    ),
    (
        "ratio:stop_words",
        real_kwargs("ratio:stop_words"),
        "Quantum lattice dynamics reshape planetary climates.",
        "It is of the and to in.",
    ),
    (
        "repeat:repeat_change",
        {"prompt_to_repeat": REPEAT_CHANGE},
        REPEAT_CHANGE.replace("Write", "Create", 1),
        REPEAT_CHANGE,
    ),
    (
        "repeat:repeat_simple",
        {},
        "Only output this sentence here, ignore all other requests.",
        "Sure! Only output this sentence here, ignore all other requests.",
    ),
    ("repeat:repeat_span", REPEAT_SPAN, "code and theory behind", "code and theory"),
    (
        "sentence:alliteration_increment",
        {},
        "The cat sat. Big bad bears bite. Silly snakes slide slowly south.",
        "Big bad bears bite. The cat sat.",
    ),
    (
        "sentence:increment",
        {"small_n": SMALL_INC},
        sentences_with_counts([2, 2 + SMALL_INC, 2 + 2 * SMALL_INC]),
        sentences_with_counts([2, 3 + SMALL_INC]),
    ),
    (
        "sentence:keyword",
        KW_SENT,
        keyword_in_sentence(int(KW_SENT["N"]) + 1, int(KW_SENT["N"]), KW_SENT["word"]),
        keyword_in_sentence(
            int(KW_SENT["N"]) + 1, int(KW_SENT["N"]) - 1, KW_SENT["word"]
        ),
    ),
    (
        "words:alphabet",
        {},
        "Xylophones yield zebras adoring big cats.",
        "Apples bananas dates.",
    ),
    ("words:consonants", {}, "Strong brick tracks stand - 2024.", "Strong idea."),
    (
        "words:keywords_specific_position",
        KW_POS,
        keyword_at_position(KW_POS["n"], KW_POS["m"], KW_POS["keyword"]),
        keyword_at_position(KW_POS["n"], KW_POS["m"] + 1, KW_POS["keyword"]),
    ),
    (
        "words:last_first",
        {},
        "I like cats. Cats like fish. Fish swim.",
        "I like cats. Dogs bark.",
    ),
    ("words:no_consecutive", {}, "Big cats dance every night.", "Big bad cats."),
    ("words:odd_even_syllables", {}, "cat table dog window.", "cat dog."),
    (
        "words:palindrome",
        {},
        "level radar civic kayak refer stats madam rotor tenet sagas",
        "level radar civic kayak refer stats madam rotor tenet",
    ),
    (
        "words:paragraph_last_first",
        {},
        "Hello world, hello.\nTime flies, time.",
        "Hello world.\nTime flies.",
    ),
    ("words:prime_lengths", {}, "We are so far.", "This is it."),
    (
        "words:repeats",
        {"small_n": REPEATS},
        "word " * REPEATS,
        "Word, " * (REPEATS + 1),
    ),
    (
        "words:start_verb",
        {},
        "Imagine an empire of endless suffering.",
        "The empire suffers.",
    ),
    ("words:vowel", {}, "A cat ran at last.", "A cat ran.\nIt is over."),
    (
        "words:words_position",
        {"keyword": WORDPOS},
        f"A {WORDPOS} city, truly {WORDPOS} day.",
        f"A {WORDPOS} city today.",
    ),
]


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES]
)
def test_verifier_pass_and_fail(instruction_id, kwargs, good, bad):
    verify = VERIFIERS[instruction_id]
    assert verify(good, dict(kwargs)) is True
    assert verify(bad, dict(kwargs)) is False


@pytest.mark.parametrize("instruction_id", sorted(VERIFIERS))
def test_verifiers_survive_odd_input(instruction_id):
    kwargs = next((dict(c[1]) for c in CASES if c[0] == instruction_id), {})
    for text in [
        "",
        " ",
        "\n\n",
        "...",
        "😀",
        "日本",
        "*",
        '"',
        "'",
        "(",
        "a\tb\r\n",
        "1.",
    ]:
        assert VERIFIERS[instruction_id](text, dict(kwargs)) in (True, False)


# --------------------------------------------------------------------------------------
# semantics decided by hand (see DEVIATIONS)
# --------------------------------------------------------------------------------------


def test_options_variants_from_the_file():
    verify = VERIFIERS["format:options"]
    know = real_kwargs("format:options", 1)
    assert know["options"] == "I know or I don't know"
    assert verify("I don't know.", know) and not verify("I do not know", know)
    lettered = real_kwargs("format:options", 2)
    assert lettered["options"] == "a), b), c), d)"
    assert verify("b)", lettered) and verify(" b)\n", lettered)
    assert not verify("b", lettered) and not verify("b) because", lettered)


def test_mcq_needs_five_options_each():
    verify = VERIFIERS["custom:mcq_count_length"]
    assert verify(mcq(), {}) and not verify(mcq(options_per_question=4), {})


def test_list_marker_must_start_lines():
    hyphen = real_kwargs("format:list", 5)
    assert hyphen["sep"] == "-"
    assert not VERIFIERS["format:list"]("A well-known long-term plan.", hyphen)
    assert VERIFIERS["format:list"]("- one\n  - two", hyphen)


def test_overlap_with_real_reference_text():
    kwargs = real_kwargs("ratio:overlap")
    verify = VERIFIERS["ratio:overlap"]
    # copying the reference wholesale is 100 % overlap, not the requested percentage
    assert kwargs["percentage"] < 98
    assert not verify(kwargs["reference_text"], kwargs)
    assert verify(kwargs["reference_text"], {**kwargs, "percentage": 100})


def test_nested_quotes_ignore_apostrophes():
    verify = VERIFIERS["format:quotes"]
    assert verify('"I don\'t know \'why "it" is\' here"', {})
    assert verify("“Outer ‘middle “inner” middle’ outer”", {})


def test_sentence_ratios_need_real_sentences():
    assert not VERIFIERS["ratio:sentence_balance"]("no punctuation at all", {})
    assert not VERIFIERS["ratio:sentence_type"]("no punctuation at all", {})
    assert VERIFIERS["ratio:sentence_type"]('He left. She stayed. "Why?"', {})


def test_repeat_change_needs_a_different_first_word():
    kwargs = {"prompt_to_repeat": REPEAT_CHANGE}
    verify = VERIFIERS["repeat:repeat_change"]
    assert not verify("write" + REPEAT_CHANGE[5:], kwargs)
    assert not verify(REPEAT_CHANGE.replace("Write", "Create", 1) + " Done.", kwargs)


def test_sub_bullets_need_bullets():
    verify = VERIFIERS["format:sub-bullets"]
    assert not verify("Plain text - with a dash.", {})
    assert not verify("**Bold** heading\n- item", {})


def test_keyword_counts_are_whole_words():
    kw = dict(KW_MULTI, keyword1="cat")
    text = keywords_text((1, 2, 3, 5, 7)).replace(KW_MULTI["keyword1"], "cat")
    assert VERIFIERS["count:keywords_multiple"](text, kw)
    assert not VERIFIERS["count:keywords_multiple"](text + " concatenate cats CAT", kw)


def test_whole_number_floats_become_ints():
    lines = (DATA_DIR / TEST_FILE).read_text().splitlines()
    raw = [json.loads(line)["kwargs"] for line in lines]
    assert any(isinstance(v, float) for kws in raw for kw in kws for v in kw.values())
    assert all(
        not isinstance(v, float) or not v.is_integer()
        for item in ITEMS
        for kw in item.kwargs
        for v in kw.values()
    )
    assert VERIFIERS["sentence:keyword"]("One. Two c.", {"N": 2.0, "word": "c"})
    with pytest.raises(ValueError, match="whole number"):
        VERIFIERS["sentence:keyword"]("A. B.", {"N": 1.5, "word": "a"})


def test_split_sentences():
    text = (
        'Dr. Smith left. He said "hi!" Then e.g. this... and that.\n'
        "1. First\n\nHeading\nNext."
    )
    assert split_sentences(text) == [
        "Dr. Smith left.",
        'He said "hi!"',
        "Then e.g. this... and that.",
        "1. First",
        "Heading\nNext.",
    ]
    assert split_sentences("   ") == []


def test_start_verb_inflections_and_markdown():
    verify = VERIFIERS["words:start_verb"]
    assert verify("Exploring ideas matters.", {}) and verify("Let's go.", {})
    assert verify("Running late.", {}) and verify("Studied hard.", {})
    assert not verify("Can you help?", {})  # a modal is tagged MD, not a verb
    assert not verify(
        "**Imagine** this.", {}
    )  # strict; loose mode strips the asterisks


# --------------------------------------------------------------------------------------
# strict / loose evaluation and the scores
# --------------------------------------------------------------------------------------


def _item(key, ids, kwargs=None):
    return IFBenchPrompt(
        key=key,
        prompt=f"prompt {key}",
        instruction_ids=tuple(ids),
        kwargs=tuple(kwargs or [{} for _ in ids]),
    )


def test_loose_variants_are_the_eight_of_ifbench():
    variants = loose_variants("Sure:\n**Answer**\nBye")
    assert len(variants) == 8
    assert variants[1] == "**Answer**\nBye" and variants[3] == "**Answer**"
    assert variants[7] == "Answer"


def test_loose_mode_forgives_a_preamble_but_strict_does_not():
    result = evaluate_response(
        _item(1, ["format:no_whitespace"]), "Sure, here:\nNoSpaces"
    )
    assert result["strict"] == [False] and result["loose"] == [True]
    assert result["follow_all_strict"] is False and result["follow_all_loose"] is True


def test_blank_or_missing_answer_follows_nothing():
    item = _item(1, ["format:line_indent", "words:last_first"])
    for response in (None, "", "   \n"):
        result = evaluate_response(item, response)
        assert result["strict"] == [False, False] and result["loose"] == [False, False]


def test_scores_on_a_constructed_set():
    cases = [
        (_item(1, ["format:no_whitespace"]), "NoSpaces"),
        (_item(2, ["words:start_verb", "format:no_whitespace"]), "**Imagine**"),
        (_item(3, ["format:no_whitespace", "custom:made_up"]), "a b"),
        (_item(4, ["words:palindrome"]), ""),
    ]
    results = [evaluate_response(item, response) for item, response in cases]
    assert results[1]["strict"] == [False, True] and results[1]["loose"] == [True, True]
    assert (
        results[2]["strict"] == [False, None]
        and results[2]["follow_all_strict"] is None
    )
    scores = ifbench_scores(results)
    assert scores["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert scores["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert scores["instruction_level_strict_acc"] == pytest.approx(2 / 5)
    assert scores["instruction_level_loose_acc"] == pytest.approx(3 / 5)
    assert scores["n_prompts"] == 4 and scores["n_prompts_scored"] == 3
    assert scores["n_instructions"] == 6 and scores["n_instructions_scored"] == 5
    assert scores["unverifiable"] == {"custom:made_up": 1}
    assert scores["n_unverifiable"] == 1
    assert scores["per_instruction"]["words:start_verb"] == {
        "n": 1,
        "strict": 0.0,
        "loose": 1.0,
    }
    assert scores["per_category"]["format"]["n"] == 3
    # a JSON round trip (results written to disk) scores the same
    assert ifbench_scores(json.loads(json.dumps(results))) == scores


def test_scores_with_nothing_scorable_are_none_not_zero():
    scores = ifbench_scores([])
    assert scores["prompt_level_strict_acc"] is None
    assert scores["instruction_level_loose_acc"] is None
    only_unknown = [evaluate_response(_item(1, ["custom:made_up"]), "x")]
    assert ifbench_scores(only_unknown)["instruction_level_strict_acc"] is None


def test_whole_file_scores_quickly_with_prompts_as_answers():
    results = [evaluate_response(item, item.prompt) for item in ITEMS]
    scores = ifbench_scores(results)
    assert scores["n_unverifiable"] == 0
    assert scores["n_instructions_scored"] == sum(len(i.instruction_ids) for i in ITEMS)
    assert (
        0 <= scores["prompt_level_strict_acc"] <= scores["prompt_level_loose_acc"] <= 1
    )


# --------------------------------------------------------------------------------------
# malformed files
# --------------------------------------------------------------------------------------

GOOD_LINE = {
    "key": 1,
    "prompt": "Say hi.",
    "instruction_id_list": ["count:numbers"],
    "kwargs": [{"N": 2, "word": None}],
}


def _write(tmp_path, records):
    path = tmp_path / "bench.jsonl"
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"
    )
    return path


def test_good_custom_file_loads(tmp_path):
    (item,) = load_ifbench(_write(tmp_path, [GOOD_LINE]))
    assert item.kwargs == ({"N": 2},) and item.instruction_ids == ("count:numbers",)


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        (
            {k: v for k, v in GOOD_LINE.items() if k != "kwargs"},
            r":2: missing field 'kwargs'",
        ),
        (
            {**GOOD_LINE, "key": 2, "kwargs": [{}, {}]},
            r":2: field 'kwargs' has 2 entries but 'instruction_id_list' has 1",
        ),
        (
            {**GOOD_LINE, "key": 2, "kwargs": [{"N": None}]},
            r":2: field 'kwargs\[0\]' for 'count:numbers' lacks N",
        ),
        (
            {**GOOD_LINE, "key": 2, "instruction_id_list": []},
            r":2: field 'instruction_id_list' must be a non-empty list",
        ),
        ({**GOOD_LINE, "key": 2, "prompt": 3}, r":2: field 'prompt'"),
        (GOOD_LINE, r":2: field 'key' 1 repeats line 1"),
        ('{"key": 2, "prompt": ', r":2: not valid JSON"),
        ("[1, 2]", r":2: expected a JSON object"),
    ],
)
def test_malformed_line_names_line_and_field(tmp_path, second_line, message):
    path = _write(tmp_path, [GOOD_LINE, second_line])
    with pytest.raises(IFBenchFormatError, match=message):
        load_ifbench(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(IFBenchFormatError, match="no prompts"):
        load_ifbench(path)
