# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's directory as a live definition store beside the TOML drop-ins.

What the daemon holds is the union of two sources:
- the TOML drop-in directories (`mdevd.store.DefinitionStore`), and
- mdevctl's directory `<root>/<parent>/<uuid>`, read with mdevctl's own rules.

One definition per UUID (the kernel allows one device per UUID). On a conflict, **the TOML
definition wins**: it is the explicit mdevd configuration. A differing mdevctl file for the
same UUID is reported as a problem naming both files and left as it is; within mdevctl's
directory, the first parent in byte order wins and every other copy is reported (mdevctl
itself allows one UUID under several parents; mdevd cannot).

In compatibility mode (this store with a directory) the directory always shows what mdevd
holds, so libvirt's file monitor, ap-check and zdev see mdevd's definitions:
- a new definition (D-Bus, the `mdevctl` front end) is written there, `<root>/<parent>/<uuid>`,
  in mdevctl's exact format; a definition read from there is changed or removed in place;
- every TOML definition is mirrored there as a copy, recorded in the directory's mirror record
  with a digest of what was written. A copy still equal to what mdevd wrote (or a file found
  identical to the TOML definition, which is then recorded as its copy) follows its TOML
  definition (rewritten when the TOML changes, removed when it goes). A copy someone else
  changed is theirs: while the TOML definition exists it is a reported conflict (the TOML
  wins, the file is not overwritten), and once the TOML definition is gone it is an mdevctl
  definition of its own. Nothing an admin or another tool wrote is overwritten or deleted,
  except by an explicit change or removal of that UUID through mdevd.
- removing a definition removes it from every source and every parent directory, as
  `mdevctl undefine` without `--parent` does.
- mdevctl's format has no placement (an `nvidia-vf` definition's pinned virtual function).
  A definition with one is kept in TOML, whatever the API or an existing mdevctl file says:
  a new one goes to the TOML drop-ins, and one read from mdevctl's directory that gains a
  placement moves there (its file becomes the mirror). The mirror copy leaves the placement
  out, and counts as up to date while it says everything else; the TOML definition wins.

Loads re-read both sources; the mirror is brought up to date on every load and write. Each
file this store writes or removes is remembered with its resulting signature, so a watcher
can ask `changed_by_others(path)` and need not take mdevd's own writes for external changes
(the engine's reload compares content too, so an echo never becomes an event).

The class is synchronous and thread-safe; the daemon's engine calls it from worker threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from mdevd import definitions, validate
from mdevd.compat.directory import FileSignature, MdevctlDirectory, MirrorEntry, file_signature
from mdevd.definitions import Problem, ProblemKind
from mdevd.errors import ConfigInvalid, Failed, NotFound
from mdevd.mdevctl_format import MdevctlTree
from mdevd.model import Definition
from mdevd.store import DefinitionStore, LoadResult
from mdevd.watch import Watched


@dataclass(slots=True)
class _View:
    result: LoadResult
    toml: LoadResult
    tree: MdevctlTree = field(default_factory=MdevctlTree)
    record: dict[str, MirrorEntry] = field(default_factory=dict)
    #: Every valid mdevctl definition of each UUID, in mdevctl's order (parent, then UUID).
    copies: dict[str, list[Definition]] = field(default_factory=dict)


def _where(definition: Definition) -> str:
    if definition.source_line > 0:
        return f"{definition.source_file}:{definition.source_line}"
    return definition.source_file


def _mirrors(copy: Definition, definition: Definition) -> bool:
    """Whether mdevctl's `copy` says all of `definition` that mdevctl's format can hold (all
    but the placement)."""
    return definitions.same_device(copy, replace(definition, placement=""))


class CompatStore:
    """The engine's definition store: TOML drop-ins plus mdevctl's directory (when given)."""

    def __init__(self, toml: DefinitionStore, mdevctl: MdevctlDirectory | None) -> None:
        self.toml = toml
        self.mdevctl = mdevctl
        self._lock = threading.RLock()
        #: path -> its signature right after mdevd wrote it (None: mdevd removed it).
        self._own_writes: dict[str, FileSignature | None] = {}

    # ---- the engine's store protocol ---------------------------------------------------

    def load(self) -> LoadResult:
        """Every definition in effect and every problem; brings the mirror up to date."""
        with self._lock:
            view = self._read()
            if self.mdevctl is not None and self._sync_mirror(view):
                view = self._read()
            return view.result

    def check(self) -> LoadResult:
        """What `load` finds, without bringing the mirror up to date: writes nothing
        (`mdevd check-config`)."""
        with self._lock:
            return self._read().result

    def save(self, definition: Definition) -> Definition:
        """Persist `definition` where it belongs (see the module documentation)."""
        wanted = definitions.check_definition(definition)
        uuid = wanted.uuid
        if self.mdevctl is None:
            # The TOML store alone: its save already checks what is in effect and reads back
            # what it wrote. (Reading every directory before and after it again made each
            # define cost three looks at every definitions file.)
            return self.toml.save(wanted)
        with self._lock:
            view = self._read()
            current = view.result.definitions.get(uuid)
            if current is not None and self._from_mdevctl(current) and not wanted.placement:
                if definitions.same_device(current, wanted):
                    return current
                saved = self._save_in_mdevctl(wanted, current)
            elif current is not None:
                # Kept in TOML, or moved there: mdevctl's format cannot hold a placement.
                saved = self.toml.save(wanted)
            else:
                self._refuse_over_broken(view, wanted)
                if wanted.placement:
                    saved = self.toml.save(wanted)
                else:
                    saved = self._save_in_mdevctl(wanted, None)
            view = self._read()
            if self.mdevctl is not None and self._sync_mirror(view, changed_through_mdevd=uuid):
                view = self._read()
            in_effect = view.result.definitions.get(uuid)
        if in_effect is None or not definitions.same_device(in_effect, wanted):
            where = saved.source_file
            raise Failed(f"device {uuid}: written to {where}, but another definition is in effect")
        return in_effect

    def remove(self, uuid: str) -> None:
        """Remove every definition of `uuid`: TOML (in place), every mdevctl copy, the record.

        `NotFound` if there is none; `ReadOnly` (before anything changed) when a vendor TOML
        directory defines it.
        """
        uuid = validate.uuid(uuid)
        if self.mdevctl is None:
            self.toml.remove(uuid)  # it raises NotFound and ReadOnly itself
            return
        with self._lock:
            view = self._read()
            in_toml = uuid in view.toml.definitions
            copies = view.copies.get(uuid, [])
            if not in_toml and not copies:
                raise NotFound(f"device {uuid} is not defined")
            if in_toml:
                self.toml.remove(uuid)
            assert self.mdevctl is not None or not copies
            for copy in copies:
                self._remove_file(Path(copy.source_file))
            if self.mdevctl is not None and uuid in view.record:
                record = dict(view.record)
                entry = record.pop(uuid)
                self._remove_file(self.mdevctl.root / entry.path, only_if=entry.digest)
                self.mdevctl.save_record(record)

    # ---- for a file watcher ------------------------------------------------------------

    def watched(self) -> list[Watched]:
        """What a watcher looks at to see the definitions change on disk: the TOML
        directories, and mdevctl's directory where mdevd's own writes do not count."""
        own = [] if self.mdevctl is None else [self.mdevctl.watched(self.changed_by_others)]
        return [*self.toml.watched(), *own]

    def changed_by_others(self, path: Path | str) -> bool:
        """False while `path` is exactly as mdevd's own last write or removal left it."""
        key = str(path)
        with self._lock:
            if key not in self._own_writes:
                return True
            return file_signature(Path(key)) != self._own_writes[key]

    # ---- reading -----------------------------------------------------------------------

    def _from_mdevctl(self, definition: Definition) -> bool:
        return self.mdevctl is not None and self.mdevctl.contains(definition.source_file)

    def _read(self) -> _View:
        toml = self.toml.load()
        if self.mdevctl is None:
            return _View(toml, toml)
        tree = self.mdevctl.read()
        record, record_problems = self.mdevctl.load_record()
        in_effect = dict(toml.definitions)
        problems = [*toml.problems, *record_problems]
        copies: dict[str, list[Definition]] = {}
        for copy in tree.definitions:
            copies.setdefault(copy.uuid, []).append(copy)
            current = in_effect.get(copy.uuid)
            if current is None:
                if not self._is_unchanged_mirror(copy, record):
                    in_effect[copy.uuid] = copy
                continue  # a copy whose TOML definition is gone: the mirror removes it
            if not self._from_mdevctl(current):
                if _mirrors(copy, current) or self._is_unchanged_mirror(copy, record):
                    continue  # the mirror of `current` (up to date, or about to be)
                message = (
                    f"device {copy.uuid} is also defined at {_where(current)}, which takes "
                    "precedence; this mdevctl definition is ignored (change or remove the "
                    "definition there to settle it)"
                )
            else:
                message = (
                    f"device {copy.uuid} is also defined under parent {current.parent} "
                    f"({current.source_file}), which takes precedence; mdevd allows one "
                    "definition per UUID (the kernel one device per UUID), so this one is "
                    "ignored"
                )
            problems.append(Problem(copy.source_file, 0, message, ProblemKind.CONFLICT, copy.uuid))
        problems.extend(tree.problems)
        result = LoadResult(in_effect, problems, toml.files, toml.masked)
        return _View(result, toml, tree, record, copies)

    def _is_unchanged_mirror(self, copy: Definition, record: dict[str, MirrorEntry]) -> bool:
        assert self.mdevctl is not None
        entry = record.get(copy.uuid)
        if entry is None or entry.path != self.mdevctl.relative(Path(copy.source_file)):
            return False
        return self.mdevctl.digest_of(Path(copy.source_file)) == entry.digest

    # ---- writing -----------------------------------------------------------------------

    def _refuse_over_broken(self, view: _View, wanted: Definition) -> None:
        """A new definition must not replace what an admin meant by a broken entry."""
        assert self.mdevctl is not None
        broken = [
            p
            for p in view.result.problems
            if p.uuid == wanted.uuid and p.kind is ProblemKind.INVALID
        ]
        if broken:
            raise ConfigInvalid(
                f"{broken[0]}; fix or remove that entry before defining device {wanted.uuid}"
            )
        target = self.mdevctl.path_for(wanted)
        if target.exists() or target.is_symlink():
            raise ConfigInvalid(
                f"{target} exists but is not a definition mdevd can use; fix or remove it "
                f"before defining device {wanted.uuid}"
            )

    def _save_in_mdevctl(self, wanted: Definition, current: Definition | None) -> Definition:
        assert self.mdevctl is not None
        if current is not None and current.parent == wanted.parent:
            path = Path(current.source_file)  # in place, under whatever name mdevctl took
        else:
            path = self.mdevctl.path_for(wanted)
        written, _ = self.mdevctl.write(wanted, path)
        self._note_own(written)
        if current is not None and Path(current.source_file) != written:
            self._remove_file(Path(current.source_file))
        return replace(wanted, source_file=str(written), source_line=0)

    def _sync_mirror(self, view: _View, changed_through_mdevd: str = "") -> bool:
        """Make the directory show every TOML definition in effect; True if anything changed.

        The copies of `changed_through_mdevd` are all replaced, edited or not: that UUID was
        just changed explicitly through mdevd.
        """
        mdevctl = self.mdevctl
        assert mdevctl is not None
        record = dict(view.record)
        changed = False
        toml_in_effect = {
            uuid: d for uuid, d in view.result.definitions.items() if not self._from_mdevctl(d)
        }
        for uuid, definition in toml_in_effect.items():
            copies = view.copies.get(uuid, [])
            entry = record.get(uuid)
            equal = [c for c in copies if _mirrors(c, definition)]
            if equal:
                path = Path(equal[0].source_file)
                relative = mdevctl.relative(path)
                digest = mdevctl.digest_of(path)
                if digest is not None and entry != MirrorEntry(relative, digest):
                    record[uuid] = MirrorEntry(relative, digest)
                    changed = True
                continue
            explicit = uuid == changed_through_mdevd
            ours = [c for c in copies if explicit or self._is_unchanged_mirror(c, record)]
            if len(ours) != len(copies):
                continue  # someone else's file for this UUID: a reported conflict, left alone
            target = mdevctl.path_for(definition)
            if (
                not explicit
                and (target.exists() or target.is_symlink())
                and not any(Path(c.source_file) == target for c in ours)
            ):
                continue  # a file mdevctl cannot read (reported), not ours to overwrite
            written, digest = mdevctl.write(definition, target)
            self._note_own(written)
            for stale in ours:
                if Path(stale.source_file) != written:
                    self._remove_file(Path(stale.source_file))
            record[uuid] = MirrorEntry(mdevctl.relative(written), digest)
            changed = True
        for uuid in [u for u in record if u not in toml_in_effect]:
            entry = record.pop(uuid)
            changed = True
            # Only the copy exactly as mdevd wrote it goes; an edited one stays, now mdevctl's.
            self._remove_file(mdevctl.root / entry.path, only_if=entry.digest)
        if changed:
            mdevctl.save_record(record)
            self._note_own(mdevctl.record_path)
        return changed

    def _remove_file(self, path: Path, *, only_if: str | None = None) -> None:
        assert self.mdevctl is not None
        if only_if is not None and self.mdevctl.digest_of(path) != only_if:
            return
        self.mdevctl.remove(path)
        self._note_own(path)

    def _note_own(self, path: Path) -> None:
        self._own_writes[str(path)] = file_signature(path)
