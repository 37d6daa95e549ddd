"""Descriptions of a user's multi-site dataset, and their validation before any training.

``describe_dataset(path)`` accepts (docs/byod.md has examples):

- a CSV manifest: columns ``case_id, image, label, domain`` (others ignored), one row per case;
  the label table from ``labels=`` or from a sidecar ``<manifest stem>.labels.json``;
- a JSON manifest: ``{"labels": ..., "domains": [optional list], "cases": [{"case_id", "image",
  "label", "domain"}, ...]}``;
- an nnU-Net raw folder (or its dataset.json): ``imagesTr/<case>_0000<ending>``,
  ``labelsTr/<case><ending>``, dataset.json with ``labels`` and ``file_ending``, and the case ->
  domain table from ``domains=`` (a mapping or a CSV path) or ``domains.csv`` (case_id,domain).

Paths in manifests are relative to the manifest's folder (or absolute; ``~`` is expanded). Cases
are kept sorted by case id (natural order); domains in their declared order (``domain_names=`` or
the JSON ``domains`` list), else sorted. ``labels=`` overrides the table in the files.

``describe_dataset`` raises ConfigError only when the description itself cannot be read (no such
file, bad JSON, missing columns or fields). ``DatasetDescription.problems()`` then lists EVERY
problem of the data, each starting with the file it is about; ``validate()`` raises one
ConfigError with all of them.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from sammed_fast.data.labelled import (
    LabelledVolume, file_ending, inspect_case, read_described_case,
)
from sammed_fast.data.images2d import is_2d_path
from sammed_fast.data.labels import LabelTable
from sammed_fast.errors import ConfigError

__all__ = ["DescribedCase", "DatasetDescription", "describe_dataset", "MANIFEST_COLUMNS",
           "labels_sidecar", "DOMAIN_TABLE"]

MANIFEST_COLUMNS = ("case_id", "image", "label", "domain")
#: the case -> domain table an nnU-Net folder may hold
DOMAIN_TABLE = "domains.csv"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _natural_key(text: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))


@dataclass(frozen=True, kw_only=True)
class DescribedCase:
    """One case of a description. ``origin`` says where it was declared (for messages; not
    compared)."""

    case_id: str
    image: Path
    label: Path
    domain: str
    origin: str = field(default="", compare=False)

    @property
    def is_2d(self) -> bool:
        return is_2d_path(self.image)


@dataclass(frozen=True, kw_only=True)
class DatasetDescription:
    """A dataset: its cases, domains and label table. ``source`` is the manifest file or nnU-Net
    folder; ``form`` is "csv", "json" or "nnunet"; ``declared_domains`` the domain list given (None:
    any non-empty name); ``notes``: problems found while describing (reported by ``problems``)."""

    source: Path
    form: str
    cases: tuple[DescribedCase, ...]
    labels: LabelTable
    declared_domains: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        """Domain names: the declared order, else sorted (natural order); empty names left out."""
        if self.declared_domains is not None:
            return self.declared_domains
        return tuple(sorted({c.domain for c in self.cases if c.domain}, key=_natural_key))

    @property
    def is_2d(self) -> bool:
        """True when every image is a 2D file (PNG, JPEG, TIFF, BMP)."""
        return bool(self.cases) and all(c.is_2d for c in self.cases)

    def cases_of(self, domain: str) -> tuple[DescribedCase, ...]:
        """The cases of one domain, in case-id order; ConfigError for an unknown domain."""
        if domain not in self.domains:
            raise ConfigError(f"{self.source}: no domain {domain!r}; domains are "
                              f"{', '.join(self.domains) or '(none)'}")
        return tuple(c for c in self.cases if c.domain == domain)

    def problems(self, *, read_files: bool = True, progress: bool = False) -> list[str]:
        """Every problem, each message starting with the file it is about: duplicate case ids,
        empty or undeclared domains, declared domains without cases, 2D mixed with 3D, and per case
        (``read_files``: reading both files; else only whether they exist) missing or unreadable
        files, label values outside the table, image/label shape or affine mismatch."""
        found = list(self.notes)
        if not self.cases:
            found.append(f"{self.source}: no cases")
        found += self._duplicate_problems() + self._domain_problems() + self._kind_problems()
        cases = tqdm(self.cases, desc="checking cases", unit="case", disable=not progress,
                     leave=False)
        for case in cases:
            if read_files:
                found += inspect_case(case, self.labels)[2]
            else:
                found += [f"{path}: {what} file not found"
                          for path, what in ((case.image, "image"), (case.label, "label"))
                          if not path.is_file()]
        return found

    def validate(self, *, read_files: bool = True, progress: bool = False) -> "DatasetDescription":
        """Returns self when ``problems()`` is empty; otherwise raises one ConfigError with all."""
        found = self.problems(read_files=read_files, progress=progress)
        if found:
            raise ConfigError(f"{self.source}: {len(found)} problem(s) in the dataset:\n  "
                              + "\n  ".join(found))
        return self

    def read(self, domain: str, *, progress: bool = False) -> list[LabelledVolume]:
        """Every case of ``domain`` as a ``LabelledVolume``, in case-id order."""
        cases = tqdm(self.cases_of(domain), desc=f"domain {domain}", unit="case",
                     disable=not progress, leave=False)
        return [read_described_case(case, self.labels) for case in cases]

    def _duplicate_problems(self) -> list[str]:
        origins: dict[str, list[str]] = {}
        for case in self.cases:
            origins.setdefault(case.case_id, []).append(case.origin or "?")
        return [f"{self.source}: case id {case_id!r} is declared {len(where)} times "
                f"({', '.join(where)})" for case_id, where in origins.items() if len(where) > 1]

    def _domain_problems(self) -> list[str]:
        found = []
        for case in self.cases:
            if not case.domain.strip():
                found.append(f"{self.source}: case {case.case_id!r} ({case.origin}) has no domain")
            elif self.declared_domains is not None and case.domain not in self.declared_domains:
                found.append(f"{self.source}: case {case.case_id!r} ({case.origin}) has domain "
                             f"{case.domain!r}, not one of the declared "
                             f"{', '.join(self.declared_domains)}")
        used = {c.domain for c in self.cases}
        found += [f"{self.source}: declared domain {d!r} has no case"
                  for d in self.declared_domains or () if d not in used]
        return found

    def _kind_problems(self) -> list[str]:
        flat = [c.image.name for c in self.cases if c.is_2d]
        volumes = [c.image.name for c in self.cases if not c.is_2d]
        if flat and volumes:
            return [f"{self.source}: mixes 2D images (e.g. {flat[0]}) with volumes (e.g. "
                    f"{volumes[0]}); one dataset must be all 2D or all 3D"]
        return []


# ------------------------------------------------------------------------------------------------
# reading descriptions

def _resolve(base: Path, text: str) -> Path:
    """A manifest path: absolute as given, else relative to ``base``; normalised, not resolved."""
    path = Path(os.path.expanduser(text))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: the {what} is not valid JSON (line {error.lineno}, column "
                          f"{error.colno}: {error.msg})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the {what} ({error})") from error


def _read_csv(path: Path, columns: Sequence[str], what: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header holding ``columns`` (values stripped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the {what} ({error})") from error
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConfigError(f"{path}: the {what} needs a header with columns {', '.join(columns)}; "
                          f"missing {', '.join(missing)} (header: {', '.join(header) or 'none'})")
    reader.fieldnames = header
    rows, bad = [], []
    for row in reader:
        if None in row:
            bad.append(f"{path} line {reader.line_num}: more fields than the header has")
            continue
        rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    if bad:
        raise ConfigError("\n".join(bad))
    return rows


def labels_sidecar(manifest: str | os.PathLike) -> Path:
    """Where a CSV manifest's label table may lie: ``<folder>/<stem>.labels.json``."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.labels.json")


def _case_from_record(record, base: Path, origin: str, errors: list[str]) -> DescribedCase | None:
    """A case from a manifest record (dict of str); appends to ``errors`` and returns None when a
    field is missing, empty or not text (domain may be empty: ``problems`` reports it)."""
    if not isinstance(record, Mapping):
        errors.append(f"{origin}: a case must be an object with {', '.join(MANIFEST_COLUMNS)}")
        return None
    values = {k: record.get(k, "") for k in MANIFEST_COLUMNS}
    wrong = [k for k, v in values.items() if not isinstance(v, str)]
    empty = [k for k, v in values.items() if k != "domain" and isinstance(v, str) and not v.strip()]
    if wrong or empty:
        errors.append(f"{origin}: " + "; ".join(
            [f"{k} must be text, got {values[k]!r}" for k in wrong] + [f"{k} is empty" for k in empty]))
        return None
    return DescribedCase(case_id=values["case_id"].strip(), image=_resolve(base, values["image"].strip()),
                         label=_resolve(base, values["label"].strip()),
                         domain=values["domain"].strip(), origin=origin)


def _checked_cases(cases: list, errors: list[str], source: Path) -> tuple[DescribedCase, ...]:
    if errors:
        raise ConfigError(f"{source}: {len(errors)} record(s) cannot be read:\n  " + "\n  ".join(errors))
    return tuple(sorted(cases, key=lambda c: _natural_key(c.case_id)))


def _domain_names(names, where: str) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"{where}: the domain list must be a list of non-empty names, got {names!r}")
    names = tuple(n.strip() for n in names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: domain(s) {twice} listed twice")
    return names


def _describe_csv(path: Path, labels, domain_names) -> DatasetDescription:
    if labels is None:
        sidecar = labels_sidecar(path)
        if not sidecar.is_file():
            raise ConfigError(f"{path}: no label table; pass labels= (e.g. 'cg=1,pz=2') or write "
                              f"{sidecar.name} next to the manifest (e.g. {{\"cg\": 1, \"pz\": 2}})")
        labels = LabelTable.parse(_read_json(sidecar, "label table"), where=str(sidecar))
    errors: list[str] = []
    cases = [_case_from_record(row, path.parent, f"line {line}", errors)
             for line, row in _read_csv(path, MANIFEST_COLUMNS, "manifest")]
    return DatasetDescription(source=path, form="csv", cases=_checked_cases(cases, errors, path),
                              labels=LabelTable.parse(labels, where="labels"),
                              declared_domains=_domain_names(domain_names, "domain_names"))


def _describe_json(path: Path, document, labels, domain_names) -> DatasetDescription:
    if not isinstance(document, Mapping) or not isinstance(document.get("cases"), list):
        raise ConfigError(f'{path}: a JSON manifest is an object with a "cases" list (and '
                          '"labels"; see docs/byod.md)')
    if labels is None:
        if "labels" not in document:
            raise ConfigError(f'{path}: no "labels" table (e.g. "labels": {{"cg": 1, "pz": 2}}), '
                              "and none passed as labels=")
        labels = LabelTable.parse(document["labels"], where=f"{path}: labels")
    errors: list[str] = []
    cases = [_case_from_record(record, path.parent, f"cases[{i}]", errors)
             for i, record in enumerate(document["cases"])]
    if domain_names is None:
        domain_names = _domain_names(document.get("domains"), f"{path}: domains")
    return DatasetDescription(source=path, form="json", cases=_checked_cases(cases, errors, path),
                              labels=LabelTable.parse(labels, where="labels"),
                              declared_domains=_domain_names(domain_names, "domain_names"))


def _domain_table(folder: Path, domains) -> tuple[dict[str, str], str]:
    """case id -> domain, and a name for where it came from."""
    if isinstance(domains, Mapping):
        return {str(k).strip(): str(v).strip() for k, v in domains.items()}, "the domains mapping"
    path = Path(domains) if domains is not None else folder / DOMAIN_TABLE
    if not path.is_file():
        raise ConfigError(f"{folder}: an nnU-Net folder needs a case -> domain table: write "
                          f"{DOMAIN_TABLE} (columns case_id,domain) there or pass domains=")
    table: dict[str, str] = {}
    twice = []
    for line, row in _read_csv(path, ("case_id", "domain"), "domain table"):
        if row["case_id"] in table:
            twice.append(f"{path} line {line}: case {row['case_id']!r} listed again")
        table[row["case_id"]] = row["domain"]
    if twice:
        raise ConfigError("\n".join(twice))
    return table, path.name


def _describe_nnunet(folder: Path, domains, labels, domain_names) -> DatasetDescription:
    dataset_json = folder / "dataset.json"
    document = _read_json(dataset_json, "nnU-Net dataset.json")
    if not isinstance(document, Mapping) or not isinstance(document.get("file_ending"), str):
        raise ConfigError(f'{dataset_json}: needs "file_ending" (e.g. ".nii.gz"), as nnU-Net v2 '
                          "writes it")
    ending = document["file_ending"].lower()
    if labels is None:
        if "labels" not in document:
            raise ConfigError(f'{dataset_json}: no "labels" table, and none passed as labels=')
        labels = LabelTable.from_nnunet(document["labels"], where=f"{dataset_json}: labels")
    notes: list[str] = []
    images: dict[str, Path] = {}
    for path in _files_with_ending(folder / "imagesTr", ending):
        match = _CHANNEL_RE.match(path.name[: -len(ending)])
        if match is None:
            notes.append(f"{path}: not named <case>_0000{ending} (nnU-Net channel suffix missing)")
        elif match["channel"] != "0000":
            notes.append(f"{path}: channel {match['channel']}; only single-channel images "
                         "(_0000) are supported")
        else:
            images[match["case"]] = path
    labels_found = {p.name[: -len(ending)]: p for p in _files_with_ending(folder / "labelsTr", ending)}
    table, table_name = _domain_table(folder, domains)
    case_ids = sorted(set(images) | set(labels_found), key=_natural_key)
    notes += [f"{table_name}: case {case_id!r} has no files in {folder}"
              for case_id in table if case_id not in case_ids]
    cases = tuple(DescribedCase(
        case_id=case_id, image=folder / "imagesTr" / f"{case_id}_0000{ending}",
        label=folder / "labelsTr" / f"{case_id}{ending}", domain=table.get(case_id, ""),
        origin=table_name if case_id in table else f"not in {table_name}") for case_id in case_ids)
    return DatasetDescription(source=folder, form="nnunet", cases=cases,
                              labels=LabelTable.parse(labels, where="labels"),
                              declared_domains=_domain_names(domain_names, "domain_names"),
                              notes=tuple(notes))


def _files_with_ending(folder: Path, ending: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.lower().endswith(ending)
                  and not p.name.startswith("."))


def describe_dataset(path: str | os.PathLike, *, domains: Mapping[str, str] | str | os.PathLike | None = None,
                     labels: "str | Mapping | LabelTable | None" = None,
                     domain_names: Sequence[str] | None = None) -> DatasetDescription:
    """Reads a dataset description: a CSV or JSON manifest, an nnU-Net raw folder or its
    dataset.json (see module docs).

    domains: nnU-Net only: case id -> domain mapping, or the path of a case_id,domain CSV
    (default: ``domains.csv`` in the folder). labels: a label table (string, mapping or
    ``LabelTable``) that replaces the files' own. domain_names: the declared domains, in order;
    cases with another domain are problems.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.exists():
        raise ConfigError(f"{path}: no such manifest file or dataset folder")
    if path.is_dir():
        if not (path / "dataset.json").is_file():
            raise ConfigError(f"{path}: a folder must be an nnU-Net raw dataset with dataset.json "
                              "(or pass a manifest .csv / .json file)")
        return _describe_nnunet(path, domains, labels, domain_names)
    ending = file_ending(path)
    if ending not in (".json", ".csv"):
        raise ConfigError(f"{path}: a manifest must be a .csv or .json file (or give an nnU-Net "
                          f"folder); {ending or 'no ending'} is neither")
    document = _read_json(path, "manifest") if ending == ".json" else None
    if isinstance(document, Mapping) and "cases" not in document and "file_ending" in document:
        return _describe_nnunet(path.parent, domains, labels, domain_names)  # an nnU-Net dataset.json
    if domains is not None:
        raise ConfigError(f"{path}: domains= is for nnU-Net folders; a manifest gives each case's "
                          "domain in its domain field")
    if ending == ".csv":
        return _describe_csv(path, labels, domain_names)
    return _describe_json(path, document, labels, domain_names)
