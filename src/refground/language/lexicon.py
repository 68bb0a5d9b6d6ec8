"""The words the parser knows, and how each wording maps into the canonical vocabulary.

Graphs are compared with SynthRef's gold graphs and consumed by structured methods, so every
spatial phrase is rewritten into one canonical string of :mod:`refground.vocabulary` whatever
its wording ("furthest to the left", "left-most" and "on the far left" all become
``leftmost``). Phrase *patterns* use a tiny syntax expanded by :mod:`refground.language.phrases`:
tokens separated by spaces, ``a|b`` for alternatives and ``(x)`` / ``(a|b)`` for optional tokens.
"""

from __future__ import annotations

from refground.vocabulary import (
    CLOSEST,
    DEPTH,
    DIRECTIONS,
    FARTHEST,
    GENERIC_HEADS,
    LARGEST,
    MIDDLE,
    ORDINALS,
    REGIONS,
    SHORTEST,
    SMALLEST,
    SPATIAL_PREDICATES,
    SUPERLATIVES,
    TALLEST,
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# A verb followed by one of these ("standing next to") reads as the geometric predicate alone.
DOMINANT_PREDICATES: frozenset[str] = frozenset(
    (*SPATIAL_PREDICATES, "between", "behind", "in front of", "far from", "bigger than",
     "smaller than"))
# "man in red shirt next to the woman": the relation after a possession/clothing object
# belongs to the owner, not to the shirt.
CLIMBING_PREDICATES: frozenset[str] = frozenset(
    ("in", "with", "wearing", "holding", "carrying", "has", "of", "full of"))
# ... except that a thing held or carried is where the next relation happens ("the man holding
# the umbrella over the woman": the umbrella is over her), as is a thing in or on a body part
# ("the dog with a frisbee in its mouth").
HANDLING_PREDICATES: frozenset[str] = frozenset(("holding", "carrying"))
BODY_PARTS: frozenset[str] = _words(
    "mouth hand hands arm arms head lap paw paws teeth shoulder shoulders back neck ear ears "
    "face foot feet leg legs finger fingers")
# Verbs of posture and placement add nothing a box can show to "in" / "on" / "at": "the cat
# sleeping on the bed" is the cat on the bed. Other verbs stay ("looking at", "leaning on").
POSTURE_VERBS: frozenset[str] = _words(
    "sitting sits sit seated lying lies lay laying standing stands stand sleeping sleeps "
    "perched resting rests hanging hangs hung parked placed located positioned situated "
    "kneeling squatting crouching floating stacked displayed mounted laid set kept stored "
    "lounging napping waiting staying seen shown sat")
LOCATIVE_PREDICATES: frozenset[str] = frozenset(("in", "on", "at"))


# --- phrase patterns: (pattern, kind, value) ----------------------------------------------------
# kinds: "spatial" (a canonical spatial value, before or after its noun), "post" (the same,
# only after its noun: "on the left"), "ordinal" (rank),
# "origin" (direction an ordinal counts from), "rel" (predicate), "conn" (dropped connector),
# "closest" (unary "closest" or binary "closest to", decided by what follows).

_TOP = "top|upper|uppermost|topmost"
_BOTTOM = "bottom|lower|lowest|bottommost"


def _superlative_patterns() -> list[tuple[str, str, str]]:
    patterns: list[tuple[str, str, str]] = []
    for side in ("left", "right"):
        value = SUPERLATIVES[side]
        patterns += [
            (f"{side}most|{side}-most", "spatial", value),
            (f"{side} most", "spatial", value),
            (f"most {side}", "spatial", value),
            (f"(the) (very) far {side} (side)", "spatial", value),
            (f"on|at|to|in (the) (very) far {side} (side|hand side)", "post", value),
            (f"on|at|to (the) very {side}", "post", value),
            (f"furthest|farthest|farest (to|on) (the) {side}", "post", value),
            (f"all the way (to|on) (the) {side}", "post", value),
        ]
    for direction, value in SUPERLATIVES.items():  # "closest to the top", "nearest the left edge"
        patterns.append(
            (f"closest|nearest (to) (the) (very) {direction} (edge|side|border|end|part)",
             "post", value))
    patterns += [
        ("topmost|uppermost|highest|upmost|top-most", "spatial", "topmost"),
        ("top most", "spatial", "topmost"),
        ("top", "spatial", "topmost"),
        ("at|on (the) very top", "post", "topmost"),
        ("highest|furthest|farthest up", "post", "topmost"),
        ("bottommost|lowest|lowermost|bottom-most", "spatial", "bottommost"),
        ("bottom most", "spatial", "bottommost"),
        ("bottom", "spatial", "bottommost"),
        ("at|on (the) very bottom", "post", "bottommost"),
        ("lowest|furthest|farthest down", "post", "bottommost"),
        ("tallest", "spatial", TALLEST),
        ("shortest", "spatial", SHORTEST),
        ("furthest|farthest (away) (from|to) (the) camera|us|you|me|viewer|photographer",
         "post", FARTHEST),
        ("furthest|farthest away|back", "post", FARTHEST),
        ("largest|biggest", "spatial", LARGEST),
        ("smallest|tiniest", "spatial", SMALLEST),
        ("bigger|larger", "spatial", "bigger"),
        ("smaller", "spatial", "smaller"),
    ]
    return patterns


def _region_patterns() -> list[tuple[str, str, str]]:
    patterns: list[tuple[str, str, str]] = []
    for side in ("left", "right"):
        value = REGIONS[side]
        patterns += [
            (side, "spatial", value),
            (f"on|at|to|in|near (the) {side} (side|hand side|part|edge|half)", "post", value),
            (f"(the) {side} (hand) side", "spatial", value),
        ]
    for vertical, words in (("top", _TOP), ("bottom", _BOTTOM)):
        patterns += [
            (f"at|near|in|on (the) {words} (side|part|edge|row|half)", "post",
             REGIONS[vertical]),
            ("up top" if vertical == "top" else "down low", "post", REGIONS[vertical]),
            ("upper" if vertical == "top" else "lower", "spatial", REGIONS[vertical]),
        ]
        for side in ("left", "right"):
            corner = REGIONS[f"{vertical} {side}"]
            patterns += [
                (f"{words} {side} (corner|side|part)", "spatial", corner),
                (f"in|at|on|near (the) {words} {side} (corner|side|part|hand corner)", "post",
                 corner),
                (f"{side} {words} (corner)", "spatial", corner),
                (f"in|at|on|near (the) {side} {words} (corner)", "post", corner),
            ]
    patterns += [
        ("on top", "post", REGIONS["top"]),
        ("middle|center|centre|central", "spatial", MIDDLE),
        ("in|at|near (the) (very) middle|center|centre", "post", MIDDLE),
        ("in (the) front", "post", DEPTH["front"]),
        ("in the foreground", "post", DEPTH["front"]),
        ("in|at (the) back", "post", DEPTH["back"]),
        ("in the background", "post", DEPTH["back"]),
        ("closest|nearest|closer (to) (the) camera|us|you|me|viewer|photographer", "post",
         CLOSEST),
    ]
    return patterns


def _ordinal_patterns() -> list[tuple[str, str, str]]:
    numerals = {1: "1st", 2: "2nd", 3: "3rd"}
    patterns = [(f"{word}|{numerals.get(rank, f'{rank}th')}", "ordinal", str(rank))
                for rank, word in ORDINALS.items()]
    patterns += [(f"(counting|counted) from (the) (very) {direction} (side|edge|end)",
                  "origin", direction) for direction in DIRECTIONS]
    patterns += [("from left to right", "origin", "left"),
                 ("from right to left", "origin", "right"),
                 ("from top to bottom", "origin", "top"),
                 ("from bottom to top", "origin", "bottom")]
    return patterns


def _relation_patterns() -> list[tuple[str, str, str]]:
    patterns: list[tuple[str, str, str]] = []
    for side in ("left", "right"):
        predicate = f"{side} of"
        patterns += [
            (f"{side} of", "rel", predicate),
            (f"to (the) {side} of", "rel", predicate),
            (f"on|at (the) {side} (hand) side of", "rel", predicate),
            (f"on (the) {side} of", "rel", predicate),
            (f"just|directly|immediately|slightly (to) (the) {side} of", "rel", predicate),
        ]
    patterns += [
        ("above|over", "rel", "above"),
        ("higher than", "rel", "above"),
        ("directly|just|right above|over", "rel", "above"),
        ("below|under|beneath|underneath", "rel", "below"),
        ("lower than", "rel", "below"),
        ("directly|just|right below|under|beneath|underneath", "rel", "below"),
        ("closest|nearest|closer (to)", "closest", "closest to"),
        ("next to", "rel", "next to"),
        ("right|just|directly next to", "rel", "next to"),
        ("beside|besides|by|near|alongside", "rel", "next to"),
        ("right|just|directly beside|by", "rel", "next to"),
        ("near|close|adjacent to", "rel", "next to"),
        ("by the side of", "rel", "next to"),
        ("between", "rel", "between"),
        ("in between", "rel", "between"),
        ("in the middle of", "rel", "between"),
        ("in (the) front of", "rel", "in front of"),
        ("infront of", "rel", "in front of"),
        ("behind", "rel", "behind"),
        ("in back of", "rel", "behind"),
        ("at the back of", "rel", "behind"),
        ("far (away) from", "rel", "far from"),
        ("furthest|farthest|away from", "rel", "far from"),
        ("bigger|larger than", "rel", "bigger than"),
        ("smaller than", "rel", "smaller than"),
        ("in|inside|within|into", "rel", "in"),
        ("inside of", "rel", "in"),
        ("on|onto|atop|upon", "rel", "on"),
        ("on top of", "rel", "on"),
        ("with|w", "rel", "with"),
        ("of", "rel", "of"),
        ("at", "rel", "at"),
        ("holding|holds", "rel", "holding"),
        ("wearing|wears", "rel", "wearing"),
        ("dressed in", "rel", "wearing"),
        ("carrying|carries", "rel", "carrying"),
        ("riding|rides", "rel", "riding"),
        ("has|have|having", "rel", "has"),
        ("full of", "rel", "full of"),
        # "the umbrella held by the woman": the woman is holding it
        ("held by", "passive", "holding"),
        ("carried by", "passive", "carrying"),
        ("worn by", "passive", "wearing"),
        ("ridden by", "passive", "riding"),
        ("eaten by", "passive", "eating"),
        ("cut by", "passive", "cutting"),
        ("pulled by", "passive", "pulling"),
        ("driven by", "passive", "driving"),
        ("used by", "passive", "using"),
        ("thrown by", "passive", "throwing"),
        ("caught by", "passive", "catching"),
        ("walked by", "passive", "walking"),
        ("covered by|with", "passive", "covering"),
        # connectors carry no meaning of their own
        ("that|which|who is|are|was|were", "conn", ""),
        ("thats|whos", "conn", ""),
        ("which|who|whose|where", "conn", ""),
        ("is|are|was|were|be|being|been", "conn", ""),
        ("there is|are", "conn", ""),
    ]
    return patterns


def _imperative_patterns() -> list[tuple[str, str, str]]:
    """Commands that open an expression ("find the purple star"); dropped at the start."""
    return [
        ("(please) find|select|locate|pick|choose|identify|spot|highlight|indicate|detect|get "
         "(me)", "imperative", ""),
        ("(please) click|tap|press (on)", "imperative", ""),
        ("(please) point (to|at) (me)", "imperative", ""),
        ("(please) show (me) (where)", "imperative", ""),
        ("(please) look for", "imperative", ""),
        ("(please) give me", "imperative", ""),
        ("where is|are", "imperative", ""),
    ]


PHRASE_PATTERNS: tuple[tuple[str, str, str], ...] = (
    *_superlative_patterns(), *_region_patterns(), *_ordinal_patterns(),
    *_relation_patterns(), *_imperative_patterns())

# --- word classes -------------------------------------------------------------------------------


DETERMINERS: frozenset[str] = _words(
    "the a an this these those his her their its my your our some any each every both all "
    "another either neither")
NUMBERS: frozenset[str] = _words(
    "two three four five six seven eight nine ten 2 3 4 5 6 7 8 9 10 couple")
COLOURS: frozenset[str] = _words(
    "red green blue yellow orange purple pink cyan white black gray grey brown gold golden "
    "silver beige tan maroon navy teal violet magenta turquoise dark light bright pale "
    "colorful colourful multicolored striped plaid spotted checkered blond blonde")
SIZES: frozenset[str] = _words(
    "big large small little medium tiny huge giant tall short long wide thin fat skinny "
    "narrow thick mini")
ADJECTIVES: frozenset[str] = _words(
    "young old new empty full half open closed other wooden metal plastic glass round upright "
    "sliced whole partial visible hidden cut same different only single lone last front back "
    "side main") | COLOURS | SIZES
INTENSIFIERS: frozenset[str] = _words("very really quite just most more slightly")
CONJUNCTIONS: frozenset[str] = _words("and or plus &")
PREPOSITIONS: frozenset[str] = _words(
    "around against across along through toward towards past about for to from up down off "
    "out without beyond among amongst via like than as per")
VERBS: frozenset[str] = _words(
    "looks look sits sit stands stand eats eat holds hold wears wear shows show faces face "
    "touching touches touch")
WH_WORDS: frozenset[str] = _words("which who whose whom where when")
# Participles without -ed/-ing ("the cross found left of the star").
PARTICIPLES: frozenset[str] = _words("found seen shown set kept laid hung sat held worn")
# Words that add nothing a box can show: "the red colored circle" is the red circle.
SKIPPED: frozenset[str] = _words("colored coloured please")
PRONOUNS: frozenset[str] = _words("it he she they them him us you me i we")
# -ing words that are nouns, so the rule backend does not read them as verbs
ING_NOUNS: frozenset[str] = _words(
    "thing things ring king building ceiling painting clothing railing string wing swing "
    "sibling icing pudding wedding awning evening morning bedding frosting topping stuffing "
    "sling spring sign ding darling ping lightning")
# Two-word nouns whose second word the lexicon would read otherwise ("light" is a colour
# word, "top" a spatial one); the first word is the compound's modifier.
COMPOUND_NOUNS: frozenset[tuple[str, str]] = frozenset(tuple(pair.split()) for pair in (
    "traffic light", "street light", "stop sign", "street sign", "fire hydrant", "hot dog",
    "cell phone", "wine glass", "tennis racket", "baseball bat", "baseball glove",
    "teddy bear", "parking meter", "ice cream", "tank top", "light pole", "night stand",
    "laptop computer", "coffee table", "dining table", "hair drier", "tooth brush",
    "computer mouse", "remote control", "sail boat", "double decker", "lamp post",
    "hand bag", "back pack", "surf board", "snow board", "skate board", "side table"))
# Adjectives that are nouns where no noun follows ("the orange in the corner"; "half of the
# sandwich"); "the orange cup" and "half sandwich" keep them adjectives.
NOUN_ADJECTIVES: frozenset[str] = _words("orange half top")
# frame nouns: "on the left of the picture" is a region, not a relation to an object
FRAME_NOUNS: frozenset[str] = _words(
    "picture image photo pic photograph frame screen scene view shot pict img")
FRAME_REGIONS: dict[str, str] = {
    "left of": REGIONS["left"], "right of": REGIONS["right"], "between": MIDDLE,
    "closest to": CLOSEST,
}

SYNTH_SHAPES: frozenset[str] = _words("circle square triangle star hexagon cross diamond pentagon")
# Nouns spaCy's small model sometimes tags otherwise ("cross" as a verb, "square" as an
# adjective); always heads. SynthRef's shapes, the generic heads, COCO classes, people words.
KNOWN_NOUNS: frozenset[str] = SYNTH_SHAPES | frozenset(GENERIC_HEADS) | _words(
    "person man woman guy girl boy lady kid child baby player people men women kids bicycle "
    "bike car motorcycle airplane plane bus train truck boat bench bird cat dog horse sheep "
    "cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis "
    "snowboard ball kite bat glove skateboard surfboard racket bottle cup fork knife spoon "
    "bowl banana apple sandwich broccoli carrot pizza donut cake chair couch plant bed table "
    "toilet tv laptop mouse remote keyboard phone microwave oven toaster sink refrigerator "
    "fridge book clock vase scissors teddy toothbrush shirt hat jacket plate glass glasses "
    "box")
IRREGULAR_PLURALS: dict[str, str] = {
    "men": "man", "women": "woman", "people": "person", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "knives": "knife", "leaves": "leaf",
    "shelves": "shelf", "wolves": "wolf", "halves": "half", "loaves": "loaf", "shoes": "shoe",
    "oxen": "ox", "calves": "calf", "scarves": "scarf", "ladies": "lady", "guys": "guy",
    "toys": "toy", "boys": "boy", "keys": "key", "monkeys": "monkey", "donkeys": "donkey",
    "trays": "tray", "movies": "movie", "cookies": "cookie", "pies": "pie", "ties": "tie",
    "buses": "bus", "potatoes": "potato", "tomatoes": "tomato", "heroes": "hero",
    "dice": "die", "cacti": "cactus", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "skis": "ski", "toes": "toe",
}
SINGULAR_S: frozenset[str] = _words(
    "bus cross glass grass dress gas lens canvas pants shorts jeans scissors glasses species "
    "series news cactus octopus bus ss christmas chess class boss kiss bonus virus tennis "
    "this his its is was us yes has does goes")

