"""What a log declares (schema 1 or 2): metadata, species, pbc, observables and where they live."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from .h5md import (
    EDGES, HDF5_ERRORS, PARAMS, PARTICLE_UNIT_ATTR, PARTICLES, POSITION, PRESENT,
    SCHEMA_VERSION, LogFormatError, ObservableSpec, check_attribute_record, decode,
    element_groups, first_line, trusted_attributes)
from .semantics import log_semantics

#: HDF5's message when a file's consistency flag is set (writer live or killed)
UNCLEAN_HINT = "may use <h5clear"


class LogHeader:
    """One opened log file: its declarations and the groups of its series.

    ``groups[name]`` is the H5MD element group of observable ``name``;
    ``columns`` (schema 2) maps a series name to its column of ``present``;
    ``semantics`` what its numbers mean (:mod:`symmon.io.semantics`).

    Every attribute the reader uses is checked against the log's checksummed record
    of them (:func:`~symmon.io.h5md.check_attribute_record`); ``notes`` says when it has
    no record (written before symmon kept one).  Anything HDF5 cannot read is a
    :class:`LogFormatError` naming it.
    """

    def __init__(self, f: h5py.File, path: str):
        self.file, self.path = f, path
        self.notes: list[str] = []
        try:
            is_log = "h5md" in f and PARAMS in f and "schema_version" in f[PARAMS].attrs
        except HDF5_ERRORS as error:
            raise LogFormatError(f"{path}: the file's root groups cannot be read, the file is "
                                 f"damaged ({first_line(error)}); restore the log from a copy "
                                 "or re-run") from error
        if not is_log:
            raise LogFormatError(f"{path}: HDF5 file is not a symmon log (no h5md / {PARAMS})")
        try:
            self.schema_version = int(f[PARAMS].attrs["schema_version"])
            self.groups = element_groups(f, self.schema_version)
            attrs = trusted_attributes(f, self.groups)
            if not check_attribute_record(f, path, attrs):
                self.notes.append(
                    f"{path}: log written before symmon checksummed its attributes: its "
                    "metadata, units and names are read unverified")
            if self.schema_version > SCHEMA_VERSION:
                raise LogFormatError(
                    f"{path}: log schema_version {self.schema_version} is newer than this "
                    f"symmon supports ({SCHEMA_VERSION}); upgrade symmon")
            params = PARAMS_PATH + "@"
            self.metadata = json.loads(attrs[params + "metadata_json"])
            self.appended_runs = json.loads(attrs.get(params + "appended_runs_json", "[]"))
            part = f[PARTICLES]
            self.species = part["species"][()]
            self.pbc = tuple(decode(b) == "periodic"
                             for b in attrs[f"/{PARTICLES}/box@boundary"])
            self.has_positions = "position" in part
            self.edges, self.position = f[EDGES], f[POSITION] if self.has_positions else None
            self.columns: dict[str, int] = {}
            if self.schema_version >= 2:
                columns = [decode(c) for c in attrs[f"/{PRESENT}@columns"]]
                self.columns = {c: k for k, c in enumerate(columns)}
                missing = sorted(set(self.groups) - set(self.columns))
                if missing:
                    raise ValueError(f"observables without a column in {PRESENT}: {missing}")
            self.specs = {n: spec_from_group(g, attrs) for n, g in self.groups.items()}
            self.semantics = log_semantics(path, attrs.get(params + "semantics_version"),
                                           self.specs)
        except LogFormatError:
            raise
        except HDF5_ERRORS as e:
            raise LogFormatError(f"{path}: malformed or damaged symmon log, its declarations "
                                 f"cannot be read ({first_line(e)}); restore the log from a "
                                 "copy or re-run") from e


PARAMS_PATH = f"/{PARAMS}"


def spec_from_group(g: h5py.Group, attrs) -> ObservableSpec:
    """The declaration of the observable in element group ``g`` (``attrs``: the log's
    :func:`~symmon.io.h5md.trusted_attributes`)."""
    value = g["value"]
    labels = attrs.get(f"{g.name}@labels")
    if labels is not None and labels.dtype.kind in "OS":
        labels = np.array([decode(x) for x in labels])
    unit = attrs.get(f"{value.name}@unit", attrs.get(f"{value.name}@{PARTICLE_UNIT_ATTR}"))
    return ObservableSpec(shape=value.shape[1:], unit=decode(unit),
                          description=decode(attrs.get(f"{g.name}@description", "")),
                          dtype=value.dtype, labels=labels)


def flagged_open_for_write(path: str) -> bool:
    """Superblock (version >= 3) status flags, byte 11: bit 0 write, bit 2 SWMR write."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    return len(head) == 12 and head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] >= 3 \
        and bool(head[11] & 0b101)


def open_for_reading(path: str) -> h5py.File:
    """Open read-only.  A file still open by a writer (live or killed) has its
    consistency flag set, which plain opening refuses (or, after a failed
    write, calls truncated): open it in SWMR-read mode instead.  Plain opening first keeps HDF5's truncation check, which
    SWMR-read mode skips."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"log file not found: {path}")
    if not h5py.is_hdf5(path):
        raise LogFormatError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        # a writer that died in a failed write (full disk) can leave the file shorter
        # than its superblock says: SWMR-read mode trusts what the writer committed
        if UNCLEAN_HINT not in str(e) and not flagged_open_for_write(path):
            raise LogFormatError(f"{path}: cannot open HDF5 file, it is damaged or "
                                 f"incomplete ({first_line(e)})") from e
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as e:
        raise LogFormatError(f"{path}: cannot open HDF5 file (in SWMR mode), it is damaged "
                             f"or incomplete ({first_line(e)})") from e
