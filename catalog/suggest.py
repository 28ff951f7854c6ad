"""Suggest shared classification codes for a dataset from its words.

The title, description and column names are split into words (snake_case,
camelCase and punctuation split, plurals reduced to the singular). Each COFOG
class gets a score: the sum, over the words it matches, of the word's input
weight (title 3, columns 2, description 1) times the match weight. A word
matches a class through the class's own name (weight 1.0), the name of its
group (0.5) or division (0.25), and through ``KEYWORDS``, a table of words
common in city data (flight, precinct, patient, ...) that code names lack.
Each word counts once per class, with its best match weight. The operator
accepts a suggestion or picks another code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from citymesh.catalog.codes import CodeList, shared_codes
from citymesh.errors import InvalidInput

TITLE_WEIGHT = 3.0
COLUMN_WEIGHT = 2.0
DESCRIPTION_WEIGHT = 1.0
NAME_MATCH = {"class": 1.0, "group": 0.5, "division": 0.25}

# Words in code and column names that identify no government function.
STOPWORDS = frozenset(
    "a an and as at by for from in n e c nec of on or other the to with r d id "
    "service general affair data dataset table record number date time year "
    "month day hour minute count total value name type code level stage pre post "
    "rowname".split()
)

# Word -> (class code, weight). Weights above 1.0 mark words that identify a
# function on their own (tailnum, precinct); ambiguous words get less.
KEYWORDS: dict[str, tuple[tuple[str, float], ...]] = {
    # Transport
    "flight": (("04.5.4", 2.0),),
    "airline": (("04.5.4", 2.0),),
    "airport": (("04.5.4", 2.0),),
    "aircraft": (("04.5.4", 2.0),),
    "plane": (("04.5.4", 1.5),),
    "tailnum": (("04.5.4", 2.0),),
    "carrier": (("04.5.4", 1.0), ("04.5.2", 0.5)),
    "runway": (("04.5.4", 2.0),),
    "dep": (("04.5.4", 0.5), ("04.5.3", 0.5)),
    "arr": (("04.5.4", 0.5), ("04.5.3", 0.5)),
    "traffic": (("04.5.1", 2.0),),
    "road": (("04.5.1", 1.5),),
    "street": (("04.5.1", 1.0),),
    "vehicle": (("04.5.1", 1.0),),
    "car": (("04.5.1", 1.0),),
    "parking": (("04.5.1", 2.0),),
    "bus": (("04.5.1", 2.0),),
    "taxi": (("04.5.1", 2.0),),
    "bike": (("04.5.1", 1.5),),
    "bicycle": (("04.5.1", 1.5),),
    "crash": (("04.5.1", 1.0),),
    "collision": (("04.5.1", 1.0),),
    "trip": (("04.5.1", 0.5), ("04.5.3", 0.5)),
    "rail": (("04.5.3", 2.0),),
    "train": (("04.5.3", 2.0),),
    "metro": (("04.5.3", 2.0),),
    "subway": (("04.5.3", 2.0),),
    "tram": (("04.5.3", 2.0),),
    "station": (("04.5.3", 1.0),),
    "ferry": (("04.5.2", 2.0),),
    "port": (("04.5.2", 1.0),),
    "vessel": (("04.5.2", 2.0),),
    # Public order and safety
    "police": (("03.1.0", 2.0),),
    "precinct": (("03.1.0", 2.0),),
    "officer": (("03.1.0", 1.5),),
    "arrest": (("03.1.0", 2.0),),
    "crime": (("03.1.0", 2.0),),
    "citation": (("03.1.0", 1.5),),
    "frisk": (("03.1.0", 2.0),),
    "stop": (("03.1.0", 0.5),),
    "search": (("03.1.0", 0.5),),
    "incident": (("03.1.0", 1.0), ("03.2.0", 0.5)),
    "fire": (("03.2.0", 2.0),),
    "firefighter": (("03.2.0", 2.0),),
    "court": (("03.3.0", 2.0),),
    "prison": (("03.4.0", 2.0),),
    "inmate": (("03.4.0", 2.0),),
    # Health
    "hospital": (("07.3.1", 2.0),),
    "patient": (("07.3.1", 1.5), ("07.2.1", 0.5)),
    "admission": (("07.3.1", 1.0),),
    "bed": (("07.3.1", 1.0),),
    "clinic": (("07.2.1", 2.0),),
    "doctor": (("07.2.1", 1.5),),
    "vaccination": (("07.4.0", 2.0),),
    "disease": (("07.4.0", 1.5),),
    "pharmacy": (("07.1.1", 2.0),),
    "ambulance": (("07.2.4", 2.0),),
    # Education
    "school": (("09.1.2", 1.5), ("09.2.1", 1.0)),
    "pupil": (("09.1.2", 2.0),),
    "student": (("09.2.1", 1.0), ("09.4.1", 1.0)),
    "teacher": (("09.1.2", 1.0), ("09.2.1", 1.0)),
    "enrollment": (("09.1.2", 1.0), ("09.2.1", 1.0)),
    "kindergarten": (("09.1.1", 2.0),),
    "university": (("09.4.1", 2.0),),
    # Environment and amenities
    "waste": (("05.1.0", 2.0),),
    "garbage": (("05.1.0", 2.0),),
    "trash": (("05.1.0", 2.0),),
    "recycling": (("05.1.0", 2.0),),
    "sewer": (("05.2.0", 2.0),),
    "wastewater": (("05.2.0", 2.0),),
    "air": (("05.3.0", 0.5),),
    "pollution": (("05.3.0", 2.0),),
    "emission": (("05.3.0", 1.5),),
    "noise": (("05.3.0", 1.5),),
    "tree": (("05.4.0", 1.5),),
    "park": (("05.4.0", 1.0), ("08.1.0", 1.0)),
    "water": (("06.3.0", 1.5),),
    "meter": (("06.3.0", 0.5), ("04.3.5", 0.5)),
    "streetlight": (("06.4.0", 2.0),),
    "lamp": (("06.4.0", 1.5),),
    "housing": (("06.1.0", 2.0), ("10.6.0", 1.0)),
    "dwelling": (("06.1.0", 2.0),),
    "rent": (("06.1.0", 1.0), ("10.6.0", 1.0)),
    "permit": (("06.1.0", 1.0), ("04.4.3", 1.0)),
    "building": (("04.4.3", 1.5),),
    "electricity": (("04.3.5", 2.0),),
    # Public finance and social protection
    "tax": (("01.1.2", 2.0),),
    "budget": (("01.1.2", 2.0),),
    "revenue": (("01.1.2", 1.5),),
    "spending": (("01.1.2", 1.0),),
    "census": (("01.3.2", 2.0),),
    "population": (("01.3.2", 1.0),),
    "election": (("01.1.1", 2.0),),
    "vote": (("01.1.1", 2.0),),
    "library": (("08.2.0", 2.0),),
    "museum": (("08.2.0", 2.0),),
    "unemployment": (("10.5.0", 2.0),),
    "pension": (("10.2.0", 2.0),),
    "childcare": (("10.4.0", 2.0),),
    "homeless": (("10.7.0", 2.0),),
    "tourism": (("04.7.3", 2.0),),
    "hotel": (("04.7.2", 1.5),),
    "restaurant": (("04.7.2", 1.5),),
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Suggestion:
    """One suggested code with its score and the input words that matched it."""

    code: str
    name: str
    score: float
    matched: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "name": self.name,
            "score": round(self.score, 3),
            "matched": list(self.matched),
        }


def singular(word: str) -> str:
    """Return a plural English word in the singular ("stops" -> "stop")."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Split text or a column name into lower-case singular words, no stopwords."""
    spaced = _CAMEL.sub(" ", text).lower()
    found = []
    for token in _SPLIT.split(spaced):
        if not token or token.isdigit():
            continue
        token = singular(token)
        if token not in STOPWORDS:
            found.append(token)
    return found


def _input_weights(
    title: str, description: str, columns: Iterable[str]
) -> dict[str, float]:
    weights: dict[str, float] = {}
    sources = [(title, TITLE_WEIGHT), (description, DESCRIPTION_WEIGHT)]
    sources += [(column, COLUMN_WEIGHT) for column in columns]
    for text, weight in sources:
        for word in words(text):
            weights[word] = max(weights.get(word, 0.0), weight)
    return weights


def _match_weights(codes: CodeList) -> dict[str, dict[str, float]]:
    """Return, per class code, each matching word and its best match weight."""
    table: dict[str, dict[str, float]] = {}
    for item in codes.codes.values():
        if item.level != "class":
            continue
        matches: dict[str, float] = {}
        current = item
        while current is not None:
            for word in words(current.name):
                weight = NAME_MATCH[current.level]
                matches[word] = max(matches.get(word, 0.0), weight)
            current = codes.codes.get(current.parent) if current.parent else None
        table[item.code] = matches
    for word, targets in KEYWORDS.items():
        for code, weight in targets:
            matches = table[code]
            matches[word] = max(matches.get(word, 0.0), weight)
    return table


def suggest_codes(
    title: str = "",
    description: str = "",
    columns: Iterable[str] = (),
    *,
    top: int = 5,
    codes: CodeList | None = None,
) -> list[Suggestion]:
    """Rank the shared COFOG classes for a dataset and return the ``top`` best.

    Classes that match no word are left out, so the list may be shorter than
    ``top`` or empty. Ties are broken by code order.
    """
    if top < 1:
        raise InvalidInput(f"top must be at least 1, got {top!r}")
    codes = codes or shared_codes()
    inputs = _input_weights(title, description, list(columns))
    suggestions = []
    for code, matches in _match_weights(codes).items():
        matched = sorted(word for word in inputs if word in matches)
        if not matched:
            continue
        score = sum(inputs[word] * matches[word] for word in matched)
        suggestions.append(
            Suggestion(code, codes.code(code).name, score, tuple(matched))
        )
    suggestions.sort(key=lambda item: (-item.score, item.code))
    return suggestions[:top]
