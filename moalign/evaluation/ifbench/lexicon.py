"""Word lists the constraints refer to (names, pronouns, stop words, verbs...), built in so that
scoring needs no NLTK corpus."""

from __future__ import annotations

CONJUNCTIONS = frozenset({"and", "but", "for", "nor", "or", "so", "yet"})

# the 50 names the count:person_names prompt lists
PERSON_NAMES = tuple(
    """
    Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan
    Charlotte Alexander Amelia Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily
    Matthew Grace Owen Abigail Gabriel Ella Jacob Scarlett Nathan Victoria Elijah
    Layla Nicholas Audrey David Hannah Christopher Penelope Thomas Nora Andrew Aria
    Joseph Claire Ryan Stella Jonathan
    """.split()
)

# personal, possessive and reflexive; demonstrative, interrogative and relative;
# indefinite
PRONOUNS = frozenset(
    """
    i me we us you he him she her it they them my mine our ours your yours his hers
    its their theirs myself ourselves yourself yourselves himself herself itself
    themselves
    this that these those who whom whose which what whoever whomever whatever
    whichever
    anybody anyone anything everybody everyone everything nobody nothing somebody
    someone something each either neither both all some any none
    """.split()
)

# NLTK's English stop-word list; the forms with an apostrophe are left out because the
# \w+ tokens these are matched against can never contain one (NLTK lists "don" and "t"
# separately as well).
STOPWORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him
    his himself she her hers herself it its itself they them their theirs themselves
    what which who whom this that these those am is are was were be been being have
    has had having do does did doing a an the and but if or because as until while
    of at by for with about against between into through during before after above
    below to from up down in out on off over under again further then once here
    there when where why how all any both each few more most other some such no nor
    not only own same so than too very s t can will just don should now d ll m o re
    ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan
    shouldn wasn weren won wouldn
    """.split()
)

MINOR_TITLE_WORDS = frozenset(
    "a an the and but or nor for so yet as at by in of off on per to up via vs".split()
)

EUROPEAN_CAPITALS_BY_LATITUDE = tuple(
    """
    Reykjavik Helsinki Oslo Tallinn Stockholm Riga Moscow Copenhagen Vilnius Minsk
    Dublin Berlin Amsterdam Warsaw London Brussels Prague Luxembourg Paris Vienna
    Bratislava Budapest Vaduz Chisinau Bern Ljubljana Zagreb
    """.split()
)

# Base forms of verbs a response plausibly opens with. Modal auxiliaries are left out on
# purpose: the Penn tag set IFBench relies on tags them MD, not VB*.
_VERBS = frozenset(
    """
    accept achieve act add address adjust adopt advise affect agree aim allow
    analyse analyze answer apply appreciate approach arrange ask assess assign
    assume attach attempt avoid be bear beat become begin believe belong bend bind
    blend boil borrow break breathe bring build burn buy calculate call calm care
    carry catch cause celebrate change charge chart check choose cite clarify
    classify clean clear click climb close collect combine come commit compare
    compile complete compose compute concentrate conclude conduct confirm connect
    consider construct consult contact contain continue contribute control convert
    cook copy correct count cover craft create cross cry cut deal debug decide
    declare decline decrease define delete deliver demonstrate deny depend deploy
    derive describe design detect determine develop devise die dig direct discover
    discuss dismiss display dive divide do document double draft drag draw dream
    dress drink drive drop earn ease eat edit educate eliminate embrace emphasize
    employ enable encourage end engage enhance enjoy ensure enter establish estimate
    evaluate examine exist expand expect experience experiment explain explore
    export express extend extract face fail fall feed feel fetch fight fill filter
    find finish fix fly focus fold follow forget forgive form formulate frame free
    gain gather generate get give glance go grab grant greet grow guess guide handle
    hang happen hate have head hear help hide highlight hire hit hold hope host hunt
    identify ignore illustrate imagine implement import improve include increase
    indicate inform initialize insert inspect install integrate intend interpret
    introduce invent invest investigate invite involve join judge jump keep kick
    kill kiss knock know label land last laugh launch lay lead lean learn leave lend
    let lie lift light like limit link list listen live load locate lock look lose
    love lower maintain make manage map mark match matter measure meet melt mention
    merge mind miss mix modify monitor move multiply name navigate need note notice
    obey observe obtain occur offer open operate order organise organize outline
    overcome own paint pass pause pay perform permit pick picture place plan plant
    play plot point pour practice practise pray predict prefer prepare present
    preserve press pretend prevent print prioritize proceed process produce program
    promise promote protect prove provide publish pull punch purchase push put
    question quote race raise rank rate reach react read realize reason recall
    receive recognize recommend record recover reduce refer refine reflect refuse
    regard reject relate relax release rely remain remember remind remove render
    repair repeat rephrase replace reply report represent request require research
    reserve resolve respond rest restate restore retain retrieve return reveal
    review revise rewrite ride ring rise roll rotate rule run rush save say scan
    schedule score search see seek select sell send separate serve set settle shake
    shape share shift shine shoot shop show shut sign simplify sing sink sit sketch
    skip sleep slide slow smell smile solve sort sound speak specify spend split
    spread stand start state stay steal step stick stop store stress stretch strike
    structure study submit succeed suffer suggest summarise summarize supply support
    suppose surround survive swim switch take talk target teach tell tend test thank
    think throw tie track trade train transfer transform translate travel treat
    trust try turn type understand undertake unite unlock update upgrade use utilize
    validate value verify view visit visualize vote wait wake walk want warn wash
    watch wear weigh welcome win wish wonder work worry wrap write yield
    """.split()
)
_IRREGULAR_VERB_FORMS = frozenset(
    """
    am is are was were been being has had does did done made took taken went gone
    gave given got gotten said saw seen knew known thought found told became began
    begun brought built bought caught chose chosen came dealt drew drawn drank drunk
    drove driven ate eaten fell fallen felt fought forgot forgotten grew grown heard
    hid hidden held kept left lay lain led lost meant met paid ran rose risen sent
    sold shown sang sung sat slept spoke spoken spent stood stole taught threw
    thrown understood woke wore worn won wrote written
    """.split()
)


def is_verb_form(word: str) -> bool:
    w = word.lower()
    if w in _VERBS or w in _IRREGULAR_VERB_FORMS:
        return True
    stems: list[str] = []
    if w.endswith("ies") or w.endswith("ied"):
        stems.append(w[:-3] + "y")
    if w.endswith("es"):
        stems.append(w[:-2])
    if w.endswith("s"):
        stems.append(w[:-1])
    for suffix in ("ed", "ing"):
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            stem = w[: -len(suffix)]
            stems += [stem, stem + "e"]
            if len(stem) > 2 and stem[-1] == stem[-2]:
                stems.append(stem[:-1])  # running -> run, stopped -> stop
    return any(s in _VERBS for s in stems)
