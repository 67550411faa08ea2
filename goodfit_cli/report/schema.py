"""REPORT_SCHEMA (JSON Schema, draft 2020-12) for goodfit.report/1 and a small validator for it.

The validator knows only the keywords this schema uses: type, required, properties,
additionalProperties, items, enum, const, minItems, maxItems. Keeping to that subset means the
report is also valid under any full JSON-Schema implementation (the tests check with jsonschema).
"""

from __future__ import annotations

from typing import Any

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_CI = {"type": ["array", "null"], "items": _NUM, "minItems": 2, "maxItems": 2}
_METRICS = {"type": "object", "additionalProperties": _NUM_OR_NULL}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None,
         nullable: bool = False) -> dict:
    return {"type": ["object", "null"] if nullable else "object", "required": list(required),
            "properties": {**required, **(optional or {})}}


def _per_task(schema: dict) -> dict:
    """{"old": schema, "new": schema}, either may be absent."""
    return {"type": "object", "properties": {"old": schema, "new": schema},
            "additionalProperties": False}


_TASK_METRICS = _obj({"old": _METRICS, "new": _METRICS})
_DELTA = {"type": "object", "additionalProperties": _obj(
    {"value": _NUM, "ci": _CI, "better": {"type": ["boolean", "null"]}})}
_FLIPS = _obj({"nfr": _NUM, "pfr": _NUM, "n_neg": _INT, "n_pos": _INT, "n": _INT,
               "nfr_ci": _CI, "pfr_ci": _CI})
_PER_CLASS = {"type": "array", "items": _obj(
    {"class": _INT, "base": _NUM, "arm": _NUM, "delta": _NUM, "count": _INT})}
_CURVE_POINT = _obj({}, {"batch": _INT, "main_steps": _INT, "epoch": _NUM_OR_NULL,
                         "old": _METRICS, "new": _METRICS,  # test: eval.curves test+val only
                         "val": {"type": "object"}, "train_loss": _NUM_OR_NULL,
                         "lr": _NUM_OR_NULL, "wall_s": _NUM_OR_NULL})
_WISE = {"type": ["array", "null"],  # test numbers ("old", "new"): α = 0, 1 and the chosen α
         "items": _obj({"alpha": _NUM}, {"old": _METRICS, "new": _METRICS,
                                         "val": _TASK_METRICS,
                                         "chosen": {"type": "boolean"}})}
_READOUT = _obj({"metric_new": _STR, "metric_old": _STR, "points": _INT,
                 "values": {"type": "array", "items": _obj({"new": _NUM, "old": _NUM_OR_NULL})}},
                nullable=True)
_GATE = _obj({"passed": {"type": "boolean"},
              "violations": {"type": "array", "items": _STR},
              "checks": {"type": "array", "items": _obj(
                  {"limit": _STR, "value": _NUM_OR_NULL, "threshold": _NUM,
                   "passed": {"type": "boolean"}, "message": _STR})}},
             nullable=True)
_ARM = _obj({
    "name": _STR, "checkpoint": _STR, "metrics": _TASK_METRICS,
    "delta": _obj({"old": _DELTA, "new": _DELTA}),
    "flips": _per_task(_FLIPS), "per_class": _per_task(_PER_CLASS),
    "curve": {"type": "array", "items": _CURVE_POINT}, "wise": _WISE,
    "readout": _READOUT, "provenance": {"type": "object"}, "gate": _GATE,
}, {"curve_split": {"enum": ["val", "test"]}})  # the split "curve" is drawn on
_TASK = _obj({"kind": {"enum": ["classification", "regression"]}, "primary": _STR},
             {"units": {"type": "object", "additionalProperties": _STR}})  # metadata: text only

REPORT_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "goodfit.report/1",
    "title": "goodfit regression report",
    **_obj({
        "schema": {"const": "goodfit.report/1"},
        "created": _STR,
        "provenance": {"type": "object"},
        "tasks": _obj({"old": _TASK, "new": _TASK}),
        "base_metrics": _TASK_METRICS,
        "arms": {"type": "array", "items": _ARM},
    }),
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}


def validate_report(report: Any, schema: dict | None = None) -> list[str]:
    """Every violation of REPORT_SCHEMA (or `schema`) as "$.path: problem"; [] when valid."""
    errors: list[str] = []
    _check(report, REPORT_SCHEMA if schema is None else schema, "$", errors)
    return errors


def _check(value: Any, schema: dict, path: str, errors: list[str]) -> None:
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if "const" in schema and not _equal(value, schema["const"]):
        errors.append(f"{path}: must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
        errors.append(f"{path}: must be one of {schema['enum']!r}, got {value!r}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{path}.{key}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{key}", errors)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items, has {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: allows at most {schema['maxItems']} items, has {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", errors)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: True is not 1."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b
