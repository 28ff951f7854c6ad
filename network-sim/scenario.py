"""Load and validate scenario files (TOML).

A scenario names its cities. Each city has a hub with compute pools, districts
with edge nodes and links to the hub, and departments attached to districts.
Department workloads usually come from a named profile in ``[profiles]``, so
that 31 departments need not repeat their workloads. See docs/netsim.md for every
key, and the shipped files in ``scenarios/`` for examples.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .arrivals import BUILTIN_PATTERNS, HOURS_PER_DAY
from .fields import ScenarioError, Table
from .specs import (
    WORKLOAD_KINDS,
    AutoscalingSpec,
    CitySpec,
    CompressionSpec,
    DepartmentSpec,
    DistrictSpec,
    LinkSpec,
    PoolSpec,
    Scenario,
    SurgeSpec,
    WorkloadSpec,
)

HUB = "hub"


def shipped_scenarios() -> list[str]:
    """Return the names of the scenarios shipped with the package."""
    folder = resources.files("citymesh.netsim") / "scenarios"
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    )


def load_scenario(source: str | Path) -> Scenario:
    """Load a scenario from a TOML file path or the name of a shipped scenario.

    Raises ScenarioError (an InvalidInput) when the file is missing, is not TOML
    or breaks a rule; the message names the key and shows the value.
    """
    path = Path(source)
    if path.suffix != ".toml" and not path.exists():
        if str(source) not in shipped_scenarios():
            names = ", ".join(shipped_scenarios())
            raise ScenarioError(
                f"scenario {str(source)!r} is neither a .toml file nor a shipped "
                f"scenario; use a file path or one of: {names}"
            )
        entry = resources.files("citymesh.netsim") / "scenarios" / f"{source}.toml"
        return parse_scenario(entry.read_text(encoding="utf-8"), f"{source}.toml")

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(
            f"scenario file {str(path)!r} not found; check the path"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(
            f"scenario file {str(path)!r} cannot be read: {error}"
        ) from None
    return parse_scenario(text, path.name)


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    """Parse and validate the text of a scenario file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{source}: invalid TOML: {error}") from None
    root = Table(data, "", source)

    head = root.table("scenario")
    name = head.text("name")
    description = head.text("description") if head.has("description") else ""
    hours = head.number("hours", 24.0, positive=True, maximum=24.0 * 366)
    seed = head.integer("seed", 1)
    start_hour = head.number("start_hour", 0.0, maximum=23.999)
    energy_price = head.number("energy_price_per_kwh", 0.15)
    bin_minutes = head.number("bin_minutes", 15.0, positive=True)
    head.finish()

    patterns = dict(BUILTIN_PATTERNS)
    if root.has("patterns"):
        pattern_table = root.table("patterns")
        for key in list(pattern_table.data):
            values = pattern_table.numbers(key)
            pattern_table.check(
                len(values) == HOURS_PER_DAY,
                key,
                "must list 24 hourly multipliers",
                values,
            )
            patterns[key] = values
        pattern_table.finish()

    profiles = root.table("profiles", {})
    cities = tuple(
        _parse_city(table, profiles, patterns) for table in root.tables("cities")
    )
    root.check(bool(cities), "cities", "must list at least one city", [])
    _check_unique([city.name for city in cities], root, "cities")
    profiles.finish(ignore=lambda key: True)

    links = tuple(_parse_link(table) for table in root.tables("links", []))
    surges = tuple(_parse_surge(table) for table in root.tables("surges", []))
    autoscaling = _parse_autoscaling(root.table("autoscaling", {}))
    compression = _parse_compression(root.table("compression", {}))
    root.finish()

    scenario = Scenario(
        name=name,
        description=description,
        cities=cities,
        patterns=patterns,
        links=links,
        surges=surges,
        autoscaling=autoscaling,
        compression=compression,
        hours=hours,
        seed=seed,
        start_hour=start_hour,
        energy_price_per_kwh=energy_price,
        bin_minutes=bin_minutes,
    )
    _check_references(scenario, source)
    return scenario


def _check_unique(names: list[str], table: Table, key: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise table.error(key, "must not repeat a name", name)
        seen.add(name)


def _parse_pool(table: Table) -> PoolSpec:
    count = table.integer("count", minimum=1)
    min_active = None
    if table.has("min_active"):
        min_active = table.integer("min_active")
        table.check(
            min_active <= count,
            "min_active",
            f"must be at most count {count}",
            min_active,
        )
    kind = table.text("kind")
    pool = PoolSpec(
        kind=kind,
        count=count,
        name=table.text("name", kind),
        speed=table.number("speed", 1.0, positive=True),
        memory_gb=table.number("memory_gb", 16.0, positive=True),
        power_busy_w=table.number("power_busy_w", 300.0),
        power_idle_w=table.number("power_idle_w", 60.0),
        cost_per_hour=table.number("cost_per_hour", 1.0),
        active_cost_per_hour=table.number("active_cost_per_hour", 0.0),
        min_active=min_active,
    )
    table.check(
        pool.power_idle_w <= pool.power_busy_w,
        "power_idle_w",
        f"must not exceed power_busy_w {pool.power_busy_w:g}",
        pool.power_idle_w,
    )
    table.finish()
    return pool


def _parse_pools(table: Table, key: str) -> tuple[PoolSpec, ...]:
    pools = tuple(_parse_pool(pool_table) for pool_table in table.tables(key, []))
    _check_unique([pool.name for pool in pools], table, key)
    return pools


def _parse_workload(table: Table, patterns: dict, scale: float) -> WorkloadSpec:
    name = table.text("name")
    kind = table.text("kind")
    table.check(
        kind in WORKLOAD_KINDS, "kind", f"must be one of {WORKLOAD_KINDS}", kind
    )

    present = [
        key for key in ("rate_per_hour", "rate_per_day", "at_s") if table.has(key)
    ]
    if len(present) != 1:
        raise ScenarioError(
            f"{table.source}: {table.path} needs exactly one of rate_per_hour, "
            f"rate_per_day or at_s, got {', '.join(present) or 'none'}"
        )
    has_times = present == ["at_s"]
    rate = table.number("rate_per_hour", 0.0) + table.number("rate_per_day", 0.0) / 24
    at_s = table.numbers("at_s") if has_times else None
    pattern = table.text("pattern", "flat")
    table.check(
        pattern in patterns,
        "pattern",
        f"must name a pattern ({', '.join(sorted(patterns))})",
        pattern,
    )

    fields: dict[str, Any] = {}
    if kind == "inference":
        fields["work_s"] = {k: v / 1000 for k, v in table.work("work_ms").items()}
        fields["target_ms"] = table.number("target_ms", 100.0, positive=True)
        fields["max_wait_ms"] = table.number("max_wait_ms", 1000.0, positive=True)
        fields["payload_kb"] = table.number("payload_kb", 0.0)
        fields["response_kb"] = table.number("response_kb", 0.0)
    elif kind == "training":
        fields["work_s"] = {k: v * 3600 for k, v in table.work("work_hours").items()}
        fields["dataset_gb"] = table.number("dataset_gb", 0.0)
        fields["units"] = table.integer("units", 1, minimum=1)
    elif kind == "transfer":
        fields["size_gb"] = table.number("size_gb", positive=True)
        fields["size_cv"] = table.number("size_cv", 0.0)
        fields["destination"] = table.text("destination", HUB)
    else:
        fields["work_s"] = dict(table.work("round_work_s"))
        fields["rounds"] = table.integer("rounds", 1, minimum=1)
        fields["partners"] = table.texts("partners")
        table.check(
            bool(fields["partners"]),
            "partners",
            "must name at least one partner department",
            [],
        )
        fields["model_mb"] = table.number("model_mb", 0.0)
    if kind != "transfer":
        fields["work_cv"] = table.number("work_cv", 0.0)
        fields["memory_gb"] = table.number("memory_gb", 0.0)
    table.finish()
    return WorkloadSpec(
        name=name,
        kind=kind,
        rate_per_hour=rate * scale,
        pattern=pattern,
        at_s=at_s,
        **fields,
    )


def _parse_department(
    table: Table, profiles: Table, patterns: dict, districts: set[str]
) -> DepartmentSpec:
    name = table.text("name")
    district = table.text("district")
    table.check(
        district in districts,
        "district",
        f"must name a district of this city ({', '.join(sorted(districts))})",
        district,
    )
    scale = table.number("scale", 1.0, positive=True)

    workloads: list[WorkloadSpec] = []
    local_pools: tuple[PoolSpec, ...] = ()
    category = "general"
    if table.has("profile"):
        profile_name = table.text("profile")
        if not profiles.has(profile_name):
            known = ", ".join(sorted(profiles.data)) or "none defined"
            raise table.error(
                "profile", f"must name a table in [profiles] ({known})", profile_name
            )
        profile = Table(
            profiles.data[profile_name], f"profiles.{profile_name}", profiles.source
        )
        category = profile.text("category", profile_name)
        local_pools = _parse_pools(profile, "local_pools")
        workloads += [
            _parse_workload(item, patterns, scale)
            for item in profile.tables("workloads", [])
        ]
        profile.finish()
    category = table.text("category", category)
    if table.has("local_pools"):
        local_pools = _parse_pools(table, "local_pools")
    workloads += [
        _parse_workload(item, patterns, scale) for item in table.tables("workloads", [])
    ]
    _check_unique([workload.name for workload in workloads], table, "workloads")
    table.finish()
    return DepartmentSpec(
        name=name,
        district=district,
        category=category,
        workloads=tuple(workloads),
        local_pools=local_pools,
        scale=scale,
    )


def _parse_district(table: Table) -> DistrictSpec:
    district = DistrictSpec(
        name=table.text("name"),
        latency_ms=table.number("latency_ms"),
        bandwidth_gbps=table.number("bandwidth_gbps", positive=True),
        access_latency_ms=table.number("access_latency_ms", 2.0),
        access_bandwidth_gbps=table.number("access_bandwidth_gbps", 1.0, positive=True),
        edge_pools=_parse_pools(table, "edge_pools"),
        edge_pue=table.number("edge_pue", 1.5, minimum=1.0),
        edge_site_cost_per_hour=table.number("edge_site_cost_per_hour", 0.0),
    )
    table.finish()
    return district


def _parse_city(table: Table, profiles: Table, patterns: dict) -> CitySpec:
    name = table.text("name")
    table.check("/" not in name, "name", "must not contain '/'", name)
    districts = tuple(_parse_district(item) for item in table.tables("districts"))
    table.check(bool(districts), "districts", "must list at least one district", [])
    district_names = {district.name for district in districts}
    departments = tuple(
        _parse_department(item, profiles, patterns, district_names)
        for item in table.tables("departments")
    )
    names = [HUB] + [d.name for d in districts] + [d.name for d in departments]
    _check_unique(names, table, "districts and departments names (and 'hub')")
    for site in names:
        table.check(
            "/" not in site, "departments", "site names must not contain '/'", site
        )
    city = CitySpec(
        name=name,
        hub_pools=_parse_pools(table, "hub_pools"),
        districts=districts,
        departments=departments,
        hub_pue=table.number("hub_pue", 1.3, minimum=1.0),
        department_pue=table.number("department_pue", 1.8, minimum=1.0),
        hub_site_cost_per_hour=table.number("hub_site_cost_per_hour", 0.0),
        department_site_cost_per_hour=table.number(
            "department_site_cost_per_hour", 0.0
        ),
    )
    table.finish()
    return city


def _parse_link(table: Table) -> LinkSpec:
    link = LinkSpec(
        a=table.text("a"),
        b=table.text("b"),
        latency_ms=table.number("latency_ms"),
        bandwidth_gbps=table.number("bandwidth_gbps", positive=True),
    )
    table.finish()
    return link


def _parse_surge(table: Table) -> SurgeSpec:
    surge = SurgeSpec(
        name=table.text("name"),
        start_hour=table.number("start_hour"),
        hours=table.number("hours", positive=True),
        multiplier=table.number("multiplier"),
        categories=table.texts("categories"),
        kinds=table.texts("kinds", ("inference",)),
        cities=table.texts("cities", ()),
    )
    for kind in surge.kinds:
        table.check(
            kind in WORKLOAD_KINDS,
            "kinds",
            f"must list kinds from {WORKLOAD_KINDS}",
            kind,
        )
    table.finish()
    return surge


def _parse_autoscaling(table: Table) -> AutoscalingSpec:
    spec = AutoscalingSpec(
        interval_s=table.number("interval_s", 60.0, positive=True),
        scale_up_queue=table.number("scale_up_queue", 2.0, positive=True),
        scale_down_idle_s=table.number("scale_down_idle_s", 900.0),
        startup_s=table.number("startup_s", 120.0),
    )
    table.finish()
    return spec


def _parse_compression(table: Table) -> CompressionSpec:
    spec = CompressionSpec(
        enabled=table.flag("enabled", False),
        speedup=table.number("speedup", 2.0, minimum=1.0),
        accuracy_cost_pct=table.number("accuracy_cost_pct", 1.0, maximum=100.0),
        memory_factor=table.number("memory_factor", 0.5, positive=True, maximum=1.0),
    )
    table.finish()
    return spec


def site_names(scenario: Scenario) -> set[str]:
    """Return every site name ``city/site`` of the scenario."""
    names = set()
    for city in scenario.cities:
        names.add(f"{city.name}/{HUB}")
        names.update(f"{city.name}/{district.name}" for district in city.districts)
        names.update(f"{city.name}/{dept.name}" for dept in city.departments)
    return names


def resolve_site(name: str, city: str, scenario: Scenario) -> str | None:
    """Resolve ``name`` (``site`` in ``city``, or ``city/site``) to a site name."""
    full = name if "/" in name else f"{city}/{name}"
    return full if full in site_names(scenario) else None


def _check_workload_references(
    where: str, workload: WorkloadSpec, city: str, scenario: Scenario
) -> None:
    if workload.kind == "transfer":
        if resolve_site(workload.destination, city, scenario) is None:
            raise ScenarioError(
                f"{where}: destination {workload.destination!r} is not a site; "
                "use 'hub', a district, a department or city/site"
            )
    departments = {
        f"{other.name}/{dept.name}"
        for other in scenario.cities
        for dept in other.departments
    }
    for partner in workload.partners:
        full = partner if "/" in partner else f"{city}/{partner}"
        if full not in departments:
            raise ScenarioError(
                f"{where}: partner {partner!r} is not a department; "
                "use a department name or city/department"
            )


def _check_references(scenario: Scenario, source: str) -> None:
    sites = site_names(scenario)
    for index, link in enumerate(scenario.links):
        for end in (link.a, link.b):
            if end not in sites:
                raise ScenarioError(
                    f"{source}: links[{index}] names unknown site {end!r}; "
                    "use city/hub, city/<district> or city/<department>"
                )
    for city in scenario.cities:
        for dept in city.departments:
            for workload in dept.workloads:
                where = (
                    f"{source}: department {city.name}/{dept.name} "
                    f"workload {workload.name!r}"
                )
                _check_workload_references(where, workload, city.name, scenario)
    for index, surge in enumerate(scenario.surges):
        for city_name in surge.cities:
            if city_name not in {city.name for city in scenario.cities}:
                raise ScenarioError(
                    f"{source}: surges[{index}].cities names unknown city {city_name!r}"
                )
