"""Personal-data detection per column, from column names and sampled values.

Categories: ``person_name``, ``id_number`` (national or local ID numbers and
record numbers that point at a person), ``phone``, ``email``, ``address``,
``coordinates`` (exact, at 4 or more decimals, about 11 m or finer) and
``date_of_birth``. Columns that identify no one alone but narrow a person down
in combination (age, gender, race, postcode, event dates, areas) are reported
as quasi-identifiers, for the k-anonymity check.

A column is flagged when its name carries a category's hint and its values do
not contradict it, or when enough of its sampled values match the category's
value pattern (``VALUE_SHARE``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from citymesh.catalog.pii_names import COMMON_GIVEN_NAMES

SAMPLE_ROWS = 5000
VALUE_SHARE = 0.6
EXACT_DECIMALS = 4
CATEGORIES = (
    "person_name",
    "id_number",
    "phone",
    "email",
    "address",
    "coordinates",
    "date_of_birth",
)
SUGGESTED_ACTION = {
    "person_name": {"action": "drop"},
    "id_number": {"action": "hash"},
    "phone": {"action": "mask", "keep_last": 2},
    "email": {"action": "hash"},
    "address": {"action": "drop"},
    "coordinates": {"action": "generalize", "cell": 0.01},
    "date_of_birth": {"action": "generalize", "to": "year"},
}

EMAIL = re.compile(r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$")
PHONE_CHARS = re.compile(r"^\+?[\d\s().-]+$")
SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
CN_RESIDENT_ID = re.compile(r"^\d{17}[\dXx]$")
RECORD_NUMBER = re.compile(r"^[A-Za-z]{0,4}\d{0,4}[-/]?\d{4,}$")
STREET = re.compile(
    r"^\d{1,6}[A-Za-z]?\s+(\w+\.?\s+){0,4}(st|street|ave|avenue|rd|road|blvd|"
    r"boulevard|dr|drive|ln|lane|way|ct|court|pl|place|ter|terrace|hwy|pkwy)\b",
    re.IGNORECASE,
)
CAPITALIZED_WORDS = re.compile(r"^[A-Z][a-z'-]+(\s+[A-Z][a-z'.-]*){1,3}$")
# Words that mark a capitalized value as an organization or a place rather
# than a person ("Endeavor Air Inc.", "Randall Airport").
ORGANIZATION_WORDS = frozenset(
    "inc inc. corp corp. corporation co co. llc ltd ltd. company airlines airline "
    "airways air airport airpark heliport intl international regional municipal "
    "county university college school hospital clinic department bank group "
    "association center centre services lines express".split()
)

NAME_HINTS: dict[str, tuple[frozenset[str], ...]] = {
    # Each entry is a set of tokens that must all appear in the column name.
    "person_name": tuple(
        frozenset(words.split())
        for words in (
            "firstname",
            "lastname",
            "surname",
            "fullname",
            "givenname",
            "familyname",
            "middlename",
            "first name",
            "last name",
            "full name",
            "given name",
            "family name",
            "middle name",
            "patient name",
            "driver name",
            "owner name",
            "contact name",
            "person name",
            "customer name",
            "officer name",
            "name",
        )
    ),
    "id_number": tuple(
        frozenset(words.split())
        for words in (
            "ssn",
            "passport",
            "nino",
            "idcard",
            "id card",
            "id number",
            "id num",
            "id no",
            "idnum",
            "idno",
            "national id",
            "citizen id",
            "personal id",
            "tax id",
            "license number",
            "licence number",
            "driver license",
            "social security",
            "case number",
            "case id",
            "record number",
            "patient id",
            "person id",
            "member id",
            "customer id",
            "sfz",
        )
    ),
    "phone": tuple(
        frozenset([word])
        for word in ("phone", "telephone", "tel", "mobile", "cell", "fax")
    ),
    "email": tuple(frozenset([word]) for word in ("email", "mail", "e mail")),
    "address": tuple(
        frozenset(words.split())
        for words in ("address", "addr", "street", "residence", "home address")
    ),
    "coordinates": tuple(
        frozenset([word])
        for word in (
            "lat",
            "latitude",
            "lon",
            "lng",
            "long",
            "longitude",
            "coord",
            "coordinates",
            "geom",
            "geometry",
        )
    ),
    "date_of_birth": tuple(
        frozenset(words.split())
        for words in ("dob", "birth", "birthdate", "birthday", "born", "date birth")
    ),
}
QUASI_HINTS = frozenset(
    {
        "age",
        "gender",
        "sex",
        "race",
        "ethnicity",
        "zip",
        "zipcode",
        "postcode",
        "postal",
        "neighborhood",
        "neighbourhood",
        "district",
        "precinct",
        "date",
        "time",
        "datetime",
        "timestamp",
        "occupation",
        "nationality",
        "religion",
        "marital",
    }
)


@dataclass(frozen=True)
class Finding:
    """A column detected as personal data or as a quasi-identifier."""

    column: str
    category: str
    basis: str
    share: float
    suggestion: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def name_tokens(column: str) -> list[str]:
    """Split a column name into lower-case words: 'idNum' -> ['id', 'num']."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column)
    return [token for token in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if token]


def name_hint(column: str) -> str | None:
    """Return the category that the column name suggests, if any."""
    tokens = name_tokens(column)
    joined = {"".join(tokens)}
    words = set(tokens) | joined
    for category, hints in NAME_HINTS.items():
        for hint in hints:
            if not hint <= words:
                continue
            # A bare "name" token marks a person's name only as the whole column
            # name; "street_name" or "dataset_name" name other things.
            if hint == frozenset(["name"]) and tokens != ["name"]:
                continue
            return category
    return None


def is_quasi_identifier(column: str) -> bool:
    """Return whether the column name marks a quasi-identifier."""
    return bool(set(name_tokens(column)) & QUASI_HINTS)


def cn_resident_id_valid(text: str) -> bool:
    """Check the ISO 7064 MOD 11-2 check digit of an 18-digit Chinese resident ID."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(
        int(digit) * weight for digit, weight in zip(text[:17], weights, strict=True)
    )
    return "10X98765432"[total % 11] == text[17].upper()


def _phone(text: str) -> bool:
    if not PHONE_CHARS.match(text):
        return False
    digits = sum(ch.isdigit() for ch in text)
    return 10 <= digits <= 15 and not SSN.match(text)


def _id_number(text: str) -> bool:
    if SSN.match(text):
        return True
    return bool(CN_RESIDENT_ID.match(text)) and cn_resident_id_valid(text)


def _name_like(text: str) -> bool:
    """Tell whether ``text`` has the shape of a person's name."""
    if not CAPITALIZED_WORDS.match(text):
        return False
    return not any(word.lower() in ORGANIZATION_WORDS for word in text.split())


def _person_name(text: str) -> bool:
    if not CAPITALIZED_WORDS.match(text):
        return False
    return text.split()[0].lower() in COMMON_GIVEN_NAMES


VALUE_TESTS = {
    "email": lambda text: bool(EMAIL.match(text)),
    "phone": _phone,
    "id_number": _id_number,
    "address": lambda text: bool(STREET.match(text)),
    "person_name": _person_name,
}


def _string_sample(values: pa.ChunkedArray | pa.Array) -> list[str]:
    texts = pc.cast(values.drop_null(), pa.string()).to_pylist()
    return [text.strip() for text in texts if text and text.strip()]


def _decimals(value: float) -> int:
    text = repr(float(value))
    if "e" in text or "." not in text:
        return 0
    return len(text.split(".")[1].rstrip("0"))


def _coordinates_exact(values: pa.ChunkedArray | pa.Array) -> float:
    numbers = [v for v in values.drop_null().to_pylist() if v is not None]
    if not numbers or any(abs(v) > 180 for v in numbers):
        return 0.0
    exact = sum(_decimals(v) >= EXACT_DECIMALS for v in numbers)
    return exact / len(numbers)


def _birth_dates(values: pa.ChunkedArray | pa.Array) -> float:
    """Return 1.0 when dates look like birth dates: day precision, decades apart."""
    present = values.drop_null()
    if len(present) == 0:
        return 0.0
    if pa.types.is_timestamp(present.type):
        midnight = pc.equal(pc.cast(present, pa.date32()).cast(present.type), present)
        if not pc.all(midnight).as_py():
            return 0.0
    years = pc.year(present)
    low, high = pc.min_max(years).values()
    if low.as_py() >= 1900 and high.as_py() - low.as_py() >= 30:
        return 1.0
    return 0.0


def detect_column(name: str, values: pa.ChunkedArray | pa.Array) -> Finding | None:
    """Return the personal-data finding for one column, or None."""
    hint = name_hint(name)
    arrow_type = values.type
    is_text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if is_text:
        sample = _string_sample(values)
        if sample:
            for category, test in VALUE_TESTS.items():
                share = sum(test(text) for text in sample) / len(sample)
                if share >= VALUE_SHARE:
                    return _finding(name, category, "values", share)
        if hint is not None and hint != "coordinates" and sample:
            share = _hint_share(hint, sample)
            if share is not None:
                return _finding(name, hint, "name", share)
    if hint == "coordinates" and (
        pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
    ):
        share = _coordinates_exact(values)
        if share >= VALUE_SHARE:
            return _finding(name, "coordinates", "name+values", share)
    if pa.types.is_temporal(arrow_type) and not pa.types.is_time(arrow_type):
        if hint == "date_of_birth":
            return _finding(name, "date_of_birth", "name", 1.0)
        if _birth_dates(values) and not is_quasi_identifier(name):
            return _finding(name, "date_of_birth", "values", 1.0)
    if hint in ("id_number", "date_of_birth") and not is_text and len(values):
        return _finding(name, hint, "name", 1.0)
    return None


def _hint_share(hint: str, sample: list[str]) -> float | None:
    """Return the share of values fitting a name-hinted category, None if refuted."""
    if hint == "id_number":
        unique = len(set(sample)) / len(sample)
        pattern = sum(bool(RECORD_NUMBER.match(t)) or _id_number(t) for t in sample)
        share = pattern / len(sample)
        return share if unique >= 0.5 and share >= VALUE_SHARE else None
    if hint == "person_name":
        share = sum(_name_like(t) for t in sample) / len(sample)
        return share if share >= VALUE_SHARE else None
    if hint in ("phone", "email", "address"):
        share = sum(VALUE_TESTS[hint](t) for t in sample) / len(sample)
        return share if share >= VALUE_SHARE / 2 else None
    return 1.0


def _finding(column: str, category: str, basis: str, share: float) -> Finding:
    return Finding(
        column, category, basis, round(share, 4), dict(SUGGESTED_ACTION[category])
    )


def detect(table: pa.Table | pa.RecordBatch) -> list[Finding]:
    """Detect personal data and quasi-identifiers in the first SAMPLE_ROWS rows."""
    sample = table.slice(0, SAMPLE_ROWS)
    findings = []
    for name in sample.column_names:
        finding = detect_column(name, sample.column(name))
        if finding is not None:
            findings.append(finding)
        elif is_quasi_identifier(name):
            findings.append(
                Finding(name, "quasi_identifier", "name", 1.0, {"action": "keep"})
            )
    return findings


def personal_columns(findings: list[dict[str, Any]] | list[Finding]) -> list[str]:
    """Return the columns flagged as direct personal data (not quasi-identifiers)."""
    names = []
    for finding in findings:
        data = finding.as_dict() if isinstance(finding, Finding) else finding
        if data["category"] in CATEGORIES:
            names.append(data["column"])
    return names
