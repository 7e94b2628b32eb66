"""A Helm chart .tgz as data: its Chart.yaml, default values and values schema, and Helm's checks.

Helm validates the *merged* values (chart defaults with the user's values coalesced on top) against the
chart's own `values.schema.json` before it touches the cluster. We do the same, earlier and with better
messages: every schema error names the values path and, through `source_of`, the jhub.env key behind it.
Nothing is extracted to disk; members are read from the archive with size limits.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import BundleError, ConfigError

_MAX_MEMBER = 8 * 1024 * 1024  # Chart.yaml, values.yaml, values.schema.json are far smaller
# Oldest 4.x release without known security problems (z2jh changelog: 4.3.4 and 4.4.0 are security releases).
SECURE_SINCE = (4, 4, 0)


@dataclass(frozen=True)
class Chart:
    """What `provision` needs from a chart archive."""

    name: str
    version: str
    app_version: str
    values: Mapping[str, Any]
    schema: Mapping[str, Any] | None
    path: str = ""
    warnings: tuple[str, ...] = field(default=())


def open_chart(path: str | os.PathLike) -> Chart:
    """Read Chart.yaml, values.yaml and values.schema.json of the top-level chart in a .tgz."""
    import yaml

    p = Path(path)
    try:
        with tarfile.open(p, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            tops = sorted(n for n in members if re.fullmatch(r"[^/]+/Chart\.yaml", n))
            if len(tops) != 1:
                raise BundleError(f"{p}: not a Helm chart archive (expected one NAME/Chart.yaml, found {len(tops)})",
                                  "use the .tgz that `helm pull` writes")
            top = tops[0].split("/")[0]

            def read(name: str) -> bytes | None:
                m = members.get(f"{top}/{name}")
                if m is None:
                    return None
                if m.size > _MAX_MEMBER:
                    raise BundleError(f"{p}: {top}/{name} is {m.size} bytes, larger than any real chart file")
                f = tar.extractfile(m)
                return f.read() if f else None

            meta = yaml.safe_load(read("Chart.yaml") or b"") or {}
            values = yaml.safe_load(read("values.yaml") or b"") or {}
            raw_schema = read("values.schema.json")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleError(f"{p}: cannot read the chart archive: {e}", "re-copy the chart from the bundle") from None
    except yaml.YAMLError as e:
        raise BundleError(f"{p}: Chart.yaml or values.yaml is not valid YAML: {e}") from None
    schema = None
    if raw_schema is not None:
        try:
            schema = json.loads(raw_schema)
        except ValueError as e:
            raise BundleError(f"{p}: values.schema.json is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(values, dict):
        raise BundleError(f"{p}: Chart.yaml and values.yaml must be mappings")
    return Chart(str(meta.get("name", "")), str(meta.get("version", "")), str(meta.get("appVersion", "")),
                 values, schema, str(p))


BUILTIN_VERSION = "4.4.0"  # the default Z2JH_CHART_VERSION
# provision/jupyterhub/data/z2jh-VERSION: each chart's values.yaml and values.schema.json -> its appVersion
PACKAGED = {"4.4.0": "5.5.0", "4.2.0": "5.3.0"}


def builtin_chart(version: str | None = None) -> Chart:
    """The packaged defaults and schema of chart `version` (the default one when it is not packaged), to
    validate values before a bundle exists."""
    from importlib import resources

    import yaml

    v = (version or BUILTIN_VERSION).lstrip("v")
    v = v if v in PACKAGED else BUILTIN_VERSION
    d = resources.files("provision.jupyterhub") / "data" / f"z2jh-{v}"
    values = yaml.safe_load(d.joinpath("values.yaml").read_text("utf-8"))
    schema = json.loads(d.joinpath("values.schema.json").read_text("utf-8"))
    return Chart("jupyterhub", v, PACKAGED[v], values, schema, f"built-in {v} schema")


def check_jupyterhub_chart(chart: Chart) -> Chart:
    """Refuse what is not a z2jh 4.x chart; warn when it is older than the latest security release."""
    if chart.name != "jupyterhub":
        raise BundleError(f"{chart.path}: chart is {chart.name!r}, expected 'jupyterhub'",
                          "put the Zero to JupyterHub chart (helm pull jupyterhub --repo "
                          "https://hub.jupyter.org/helm-chart/) in the bundle's charts/ folder")
    v = version_tuple(chart.version)
    if not v or v[0] != 4:
        raise BundleError(f"{chart.path}: jupyterhub chart {chart.version} is not a 4.x release",
                          "provision supports Zero to JupyterHub 4.x charts (JupyterHub 5)")
    warnings = list(chart.warnings)
    if v < SECURE_SINCE:
        warnings.append(f"jupyterhub chart {chart.version} predates the security fixes of 4.3.4/4.4.0; "
                        "bring a newer 4.x chart in the bundle when you can")
    if chart.schema is None:
        warnings.append(f"{chart.path}: has no values.schema.json; values are not validated")
    return Chart(chart.name, chart.version, chart.app_version, chart.values, chart.schema, chart.path,
                 tuple(warnings))


def version_tuple(version: str) -> tuple[int, ...]:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version.strip())
    return tuple(int(x) for x in m.groups()) if m else ()


def find_chart(bundle_dir: str | os.PathLike, name: str = "jupyterhub", version: str | None = None) -> Path:
    """The chart archive in a bundle: from manifest.yaml when there is one, else charts/NAME-*.tgz."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle directory", "pass --bundle DIR (the offline-images folder)")
    if (bundle / "manifest.yaml").is_file():
        from provision.bundle import load_manifest

        entry = load_manifest(bundle).chart(name, version)
        if entry is None:
            raise BundleError(f"{bundle}/manifest.yaml lists no {name} chart" + (f" {version}" if version else ""),
                              f"add charts/{name}-{version or 'VERSION'}.tgz and rebuild the manifest")
        return bundle / entry.file
    found = sorted((bundle / "charts").glob(f"{name}-*.tgz"))
    if version:
        found = [f for f in found if f.name[len(name) + 1:-4].lstrip("v") == version.lstrip("v")]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise BundleError(f"{bundle}/charts: {what} {name} chart archive" + (f" for version {version}" if version
                                                                               else "") + " found",
                          f"put exactly one {name}-VERSION.tgz there (helm pull writes that name)")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Helm semantics


def merge_values(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalesce: maps merge key by key, lists and scalars replace, a null override deletes the key."""
    out: dict[str, Any] = copy.deepcopy(dict(defaults))
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_values(out[k], v)
        elif isinstance(v, Mapping):
            out[k] = merge_values({}, v)  # drop nulls inside a new map too, as Helm does
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class SchemaProblem:
    path: str  # values path, e.g. singleuser.profileList[1].slug
    message: str
    key: str | None = None  # the jhub.env key that produced the value, when known

    def __str__(self) -> str:
        src = f" (from {self.key})" if self.key else ""
        return f"values {self.path or '(root)'}: {self.message}{src}"


def dotted(path: Any) -> str:
    """('singleuser', 'profileList', 1, 'slug') → 'singleuser.profileList[1].slug'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_problems(values: Mapping[str, Any], schema: Mapping[str, Any],
                    source_of: Callable[[str], str | None] | None = None) -> list[SchemaProblem]:
    """Every Draft 7 error of already merged values, sorted by path."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    out = []
    for err in validator.iter_errors(values):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set((err.schema or {}).get("properties", {}))
            extra = sorted(k for k in err.instance if k not in allowed)
            if extra:
                path = path + [extra[0]]
        p = dotted(path)
        out.append(SchemaProblem(p, _short(err.message), source_of(p) if source_of else None))
    return sorted(out, key=lambda x: x.path)


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


def validate_release_values(values: Mapping[str, Any], chart: Chart,
                            source_of: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """Merge over the chart's defaults and validate as Helm would; ConfigError listing every problem."""
    merged = merge_values(chart.values, values)
    if chart.schema is not None:
        problems = schema_problems(merged, chart.schema, source_of)
        if problems:
            raise ConfigError([str(p) for p in problems],
                              f"these values do not fit the {chart.name} {chart.version} chart schema; fix the "
                              "jhub.env keys named above (or report a bug if none is named)")
    return merged
