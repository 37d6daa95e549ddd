"""Label tables: which values of an integer label map make up which named structure.

A ``LabelTable`` lists structures in order; each has a name and either one or more label values
(a region: several values, possibly shared with other structures, as nnU-Net's region labels) or
``None``, meaning every non-zero value (the prostate preset). Value 0 is always background.

Written forms, all read by ``LabelTable.parse``:

- a string: ``"cg=1,pz=2"``; several values with ``+``: ``"gland=1+2,pz=2"``; ``*`` for every
  non-zero value: ``"prostate=*"``;
- a mapping: ``{"cg": 1, "pz": [2]}``, ``{"prostate": "*"}``; an entry ``"background": 0`` is
  skipped, so an nnU-Net ``labels`` table can be passed as it is;
- an nnU-Net dataset.json ``labels`` table via ``LabelTable.from_nnunet`` (v2 ``{"name": value}``
  with region lists and an ``ignore`` label, or v1 ``{"value": "name"}``).

``table.masks(label_map)`` gives one boolean mask per structure, shape (C, *label_map.shape); a
structure absent from a slice is all False there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from sammed_fast.errors import ConfigError

__all__ = ["Structure", "LabelTable", "PROSTATE_LABELS", "integer_label_map"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]*$")
EVERY_NONZERO = "*"


@dataclass(frozen=True)
class Structure:
    """One named structure: the label values it covers (sorted), or None for every non-zero value."""

    name: str
    values: tuple[int, ...] | None

    def covers(self, label_map: np.ndarray) -> np.ndarray:
        """bool mask, same shape as ``label_map``."""
        if self.values is None:
            return np.asarray(label_map) != 0
        return np.isin(label_map, self.values)

    def spec(self) -> str:
        """The string form, e.g. ``gland=1+2``."""
        values = EVERY_NONZERO if self.values is None else "+".join(map(str, self.values))
        return f"{self.name}={values}"


def _label_value(value, where: str) -> int:
    """A positive int label value (bool, float and 0 refused)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{where}: label value {value!r} is not an integer")
    if value <= 0:
        raise ConfigError(f"{where}: label value {value} must be positive (0 is background)")
    return int(value)


def _structure(name, values, where: str) -> Structure:
    if not isinstance(name, str) or not _NAME_RE.match(name.strip()):
        raise ConfigError(f"{where}: structure name {name!r} must start with a letter, digit or _ "
                          "and hold only letters, digits, spaces and _ . -")
    name = name.strip()
    where = f"{where}: structure {name!r}"
    if isinstance(values, str) and values.strip() == EVERY_NONZERO:
        return Structure(name, None)
    if isinstance(values, str):
        parts = values.split("+")
        if any(not p.strip() for p in parts):
            raise ConfigError(f"{where}: empty value in {values!r} (write e.g. 1+2)")
        values = parts
    if not isinstance(values, Iterable) or isinstance(values, (str, bytes, Mapping)):
        values = [values]
    values = [_label_value(v, where) for v in values]
    if not values:
        raise ConfigError(f"{where}: no label values")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: a label value is listed twice in {values}")
    return Structure(name, tuple(sorted(values)))


@dataclass(frozen=True)
class LabelTable:
    """Structures in order. ``ignored``: values allowed in label maps that belong to no structure
    (nnU-Net's ``ignore`` label: not annotated); they count neither as structure nor background
    in ``masks``/``union``."""

    structures: tuple[Structure, ...]
    ignored: tuple[int, ...] = field(default=())

    def __post_init__(self):
        structures = tuple(self.structures)
        if not structures:
            raise ConfigError("label table: no structures (give at least one, e.g. 'prostate=*')")
        names = [s.name for s in structures]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"label table: structure name(s) {twice} given twice")
        clash = sorted(set(self.ignored) & set(self.declared_values_of(structures)))
        if clash:
            raise ConfigError(f"label table: value(s) {clash} are both ignored and a structure's")
        object.__setattr__(self, "structures", structures)
        object.__setattr__(self, "ignored", tuple(sorted(self.ignored)))

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: "str | Mapping | LabelTable", *, where: str = "labels") -> "LabelTable":
        """A table from its string or mapping form (see module docs); ``where`` starts error
        messages (e.g. the file the table came from)."""
        if isinstance(spec, LabelTable):
            return spec
        if isinstance(spec, str):
            items = []
            for part in spec.split(","):
                if not part.strip():
                    raise ConfigError(f"{where}: empty entry in {spec!r} (write e.g. 'cg=1,pz=2')")
                name, eq, values = part.partition("=")
                if not eq or not values.strip():
                    raise ConfigError(f"{where}: {part.strip()!r} is not name=value "
                                      f"(write e.g. 'cg=1,pz=2', 'gland=1+2' or 'prostate=*')")
                items.append((name, values))
        elif isinstance(spec, Mapping):
            items = [(name, values) for name, values in spec.items()
                     if not (name == "background" and values in (0, [0], (0,)))]
        else:
            raise ConfigError(f"{where}: a label table is a string like 'cg=1,pz=2' or a mapping "
                              f"like {{'cg': 1, 'pz': 2}}, got {type(spec).__name__}")
        return cls(tuple(_structure(name, values, where) for name, values in items))

    @classmethod
    def from_nnunet(cls, labels: Mapping, *, where: str = "dataset.json") -> "LabelTable":
        """An nnU-Net ``labels`` table: v2 ``{"background": 0, "name": value or [values]}`` (an
        ``"ignore"`` entry becomes an ignored value) or v1 ``{"0": "background", "1": "name"}``."""
        if not isinstance(labels, Mapping) or not labels:
            raise ConfigError(f"{where}: 'labels' must be a non-empty object, got {labels!r}")
        if all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in labels.items()):
            labels = {name: int(value) for value, name in labels.items()}  # v1: value -> name
        entries = {name: values for name, values in labels.items()
                   if values not in (0, [0], (0,)) and name != "ignore"}
        ignored = labels.get("ignore")
        table = cls.parse(entries, where=where)
        if ignored is None:
            return table
        return cls(table.structures, ignored=(_label_value(ignored, f"{where}: 'ignore'"),))

    # -- queries --------------------------------------------------------------------------------

    @staticmethod
    def declared_values_of(structures: Iterable[Structure]) -> list[int]:
        return sorted({v for s in structures if s.values is not None for v in s.values})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures)

    @property
    def every_nonzero(self) -> bool:
        """True when some structure covers every non-zero value (then no value is unknown)."""
        return any(s.values is None for s in self.structures)

    def __len__(self) -> int:
        return len(self.structures)

    def spec(self) -> str:
        """The string form, e.g. ``cg=1,pz=2`` (ignored values are not part of it)."""
        return ",".join(s.spec() for s in self.structures)

    def as_mapping(self) -> dict[str, int | list[int] | str]:
        """The mapping form, JSON-ready: one value as an int, several as a list, or ``"*"``."""
        return {s.name: EVERY_NONZERO if s.values is None
                else (s.values[0] if len(s.values) == 1 else list(s.values))
                for s in self.structures}

    def masks(self, label_map: np.ndarray) -> np.ndarray:
        """bool (C, *label_map.shape): mask c is structure c (structures may overlap)."""
        label_map = np.asarray(label_map)
        return np.stack([s.covers(label_map) for s in self.structures])

    def union(self, label_map: np.ndarray) -> np.ndarray:
        """uint8 in {0, 1}, same shape: 1 where any structure is (the single-structure label)."""
        return self.masks(label_map).any(axis=0).astype(np.uint8)

    def paint(self, masks: np.ndarray) -> np.ndarray:
        """bool (C, *shape) masks, one per structure in table order -> a label map (*shape) that
        holds each structure's smallest value (1 for every-non-zero), painted in table order, later
        structures over earlier ones; 0 elsewhere. uint8 when every value fits, else int32."""
        masks = np.asarray(masks, dtype=bool)
        if masks.shape[0] != len(self):
            raise ValueError(f"{masks.shape[0]} masks for a table of {len(self)} structures")
        values = [1 if s.values is None else s.values[0] for s in self.structures]
        out = np.zeros(masks.shape[1:], dtype=np.uint8 if max(values) <= 255 else np.int32)
        for mask, value in zip(masks, values):
            out[mask] = value
        return out

    def unknown_values(self, label_map: np.ndarray) -> list[int]:
        """Sorted values of ``label_map`` that are neither 0, ignored nor any structure's."""
        if self.every_nonzero:
            return []
        present = np.unique(np.asarray(label_map))
        known = [0, *self.ignored, *self.declared_values_of(self.structures)]
        return [int(v) for v in present[~np.isin(present, known)]]


#: The six-site prostate preset: every non-zero value is prostate.
PROSTATE_LABELS = LabelTable((Structure("prostate", None),))


def integer_label_map(label: np.ndarray, name: str) -> np.ndarray:
    """A label array as int32, same shape; float labels must hold whole numbers. Raises
    ConfigError naming ``name`` (the file) for NaN, fractions or values beyond int32."""
    label = np.asarray(label)
    if label.dtype == np.bool_:
        return label.astype(np.int32)
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            raise ConfigError(f"{name}: label contains NaN or infinite values")
        fractional = label[label != np.round(label)]
        if fractional.size:
            raise ConfigError(f"{name}: label values must be whole numbers, found e.g. "
                              f"{float(fractional.flat[0])!r} (an interpolated or probability map?)")
    elif not np.issubdtype(label.dtype, np.integer):
        raise ConfigError(f"{name}: label has data type {label.dtype}; integers are needed")
    info = np.iinfo(np.int32)
    if label.size and (label.min() < info.min or label.max() > info.max):
        raise ConfigError(f"{name}: label values {label.min()}..{label.max()} exceed int32")
    return label.astype(np.int32)
