"""IFBench: out-of-distribution verifiable instruction following, scored with no model.

IFBench (AllenAI, Apache-2.0; https://github.com/allenai/IFBench) has 294 test prompts,
each carrying one or more output constraints from 57 types ("count:keywords_multiple",
"words:consonants", ...). Every constraint is checked by a small pure function, registered as
``VERIFIERS[instruction_id](response, kwargs) -> bool``, where ``kwargs`` is the
instruction's argument dict with the ``None`` values dropped (the dataset stores every
argument name of every type on every line, mostly ``None``).

Scoring follows IFBench's ``evaluation_lib``:

* strict: the response, as given, must be non-blank and pass the verifier;
* loose: an upper bound; the instruction counts as followed when any of eight variants
  passes (the response, it without its first line, without its last line, without both,
  and each of those four with every ``*`` removed), so a chatty preamble, a sign-off or
  markdown bold does not decide it;
* prompt-level accuracy: share of prompts whose instructions are all followed;
  instruction-level accuracy: share of all (prompt, instruction) pairs followed.

An instruction id with no verifier is never counted as passed or failed: it is reported
as unverifiable, left out of the instruction-level denominator, and a prompt that
carries one is left out of the prompt-level denominator (whether *all* its instructions
were followed is unknowable). All 57 ids used by the test file have verifiers, so
``UNVERIFIABLE`` is empty for it.

The semantics are IFBench's ``instructions.py``, re-implemented without its dependencies
(NLTK's punkt sentence splitter, Treebank tokenizer, stop-word corpus and POS tagger,
``syllapy`` and ``emoji``), so scores are close to, not bit-identical with, the
reference harness. Where the reference code disagrees with the instruction text it
checks (or with its own docstring), the text is taken as the specification. Those
decisions are listed in ``DEVIATIONS``; the verifiers whose core judgement is a
heuristic stand-in for a model-free NLP tool are listed in ``APPROXIMATE``.

Where things are: one module per instruction family holds its verifiers (``count``,
``custom``, ``layout`` for ``format:``, ``ratio``, ``repeat``, ``sentence``, ``words``), helped
by :mod:`.text` (sentence splitter, tokenizer, counts) and :mod:`.lexicon` (word lists);
:mod:`.verifiers` is the registry and its notes; :mod:`.loading` reads the test file from a
path the caller gives; :mod:`.scoring` turns answers into verdicts and accuracies.
"""

from moalign.evaluation.ifbench.loading import TEST_FILE, IFBenchFormatError, IFBenchPrompt, load_ifbench
from moalign.evaluation.ifbench.scoring import evaluate_response, ifbench_scores, loose_variants
from moalign.evaluation.ifbench.text import split_sentences
from moalign.evaluation.ifbench.verifiers import (
    APPROXIMATE,
    DEVIATIONS,
    REQUIRED_KWARGS,
    UNVERIFIABLE,
    VERIFIERS,
    Verifier,
)

__all__ = [
    "APPROXIMATE",
    "DEVIATIONS",
    "REQUIRED_KWARGS",
    "TEST_FILE",
    "UNVERIFIABLE",
    "VERIFIERS",
    "IFBenchFormatError",
    "IFBenchPrompt",
    "Verifier",
    "evaluate_response",
    "ifbench_scores",
    "load_ifbench",
    "loose_variants",
    "split_sentences",
]
