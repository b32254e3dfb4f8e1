"""The audit trail: every change to the platform's configuration becomes an `AuditEntry`.

Who acted is a context variable, set around the work by whoever starts it:

    with audit.acting(staff=request.user): ...            # the admin (console's AdminSite.admin_view)
    with audit.acting(command="rotate_credentials"): ...  # AuditedCommand, for every writing command
    with audit.acting(import_source="tenants.json"): ...  # config.apply.config_apply
    with audit.acting(api_key_id=caller.key_id): ...      # the tenant key API (/v1/keys)

A change made outside any of them is recorded as "system".

What changed is recorded by model signals over a registry of audited models (`register`,
called by each app's AppConfig.ready), so that nothing saved through the ORM can be missed,
whichever form, action or service saved it: pre_save reads the row as the database has it,
post_save writes the difference; pre_delete the row as it was; m2m_changed the names before
and after (a tenant's or a key's allowed models). Writes that send no signals (`.update()`,
`bulk_create`, `bulk_update`) are audited by going through `queryset_update` or by calling
`record_created` / `record_updated` themselves.

Inside `collecting()` (the admin's POSTs, an import, the services that write several times to
one object) the entries wait and are merged per object, then written together at the end of
its transaction: a key created with its models is one entry, not a create and an update.

Secrets and hashes never reach an entry: a changed secret shows as "[secret]" → "[new secret]".
A save that changes nothing leaves no entry. The gateway's hot path writes no audited fields
(`last_used_at` is excluded; usage records are not audited).
"""

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from django.core.management.base import BaseCommand
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_save, pre_delete, pre_save
from django.utils import timezone

from .models import ApiKey, AuditEntry, Tenant

# Never recorded: bookkeeping the entry itself already says (when) or the hot path writes.
IGNORED_FIELDS = frozenset({"created_at", "updated_at", "last_used_at"})
# Recorded only as "[secret]": that it is set and whether it changed, never its value or hash.
SECRET_FIELDS = frozenset({"key_hash", "encrypted_secret", "alert_webhook_secret"})
SECRET = "[secret]"  # noqa: S105 (a placeholder shown instead of a secret)
NEW_SECRET = "[new secret]"  # noqa: S105


@dataclasses.dataclass(frozen=True)
class Actor:
    kind: str
    label: str
    staff_user_id: int | None = None
    api_key_id: int | None = None


SYSTEM = Actor(kind=AuditEntry.ActorKind.SYSTEM, label="system")
_actor: ContextVar[Actor] = ContextVar("audit_actor", default=SYSTEM)


def current_actor() -> Actor:
    return _actor.get()


@contextlib.contextmanager
def acting(
    *,
    staff: Any = None,
    command: str | None = None,
    import_source: str | None = None,
    api_key: Any = None,
    api_key_id: int | None = None,
) -> Iterator[Actor]:
    """Record the changes made inside as made by this actor (exactly one argument).

    `api_key` is a tenant admin key (an ApiKey); `api_key_id` the same by id, for callers that
    hold only the gateway's cached view of the key (the key API): its display form is read once.
    An import inside another actor (a command, a staff user) keeps who started it in its label
    and the staff user's id: "tenants.json by import_tenants".
    """
    given = [value for value in (staff, command, import_source, api_key, api_key_id) if value is not None]
    if len(given) != 1:
        raise TypeError("acting() takes exactly one of staff, command, import_source, api_key, api_key_id")
    if api_key_id is not None:
        api_key = ApiKey.objects.only("prefix", "last4").get(pk=api_key_id)
    if staff is not None:
        actor = Actor(kind=AuditEntry.ActorKind.STAFF, label=staff.get_username(), staff_user_id=staff.pk)
    elif command is not None:
        actor = Actor(kind=AuditEntry.ActorKind.COMMAND, label=command)
    elif api_key is not None:
        # The key's display form (prefix…last4), never its secret or hash.
        actor = Actor(kind=AuditEntry.ActorKind.TENANT_KEY, label=api_key.display, api_key_id=api_key.pk)
    else:
        outer = _actor.get()
        label = import_source if outer is SYSTEM else f"{import_source} by {outer.label}"
        actor = Actor(
            kind=AuditEntry.ActorKind.IMPORT,
            label=label[:200],
            staff_user_id=outer.staff_user_id,
            api_key_id=outer.api_key_id,
        )
    token = _actor.set(actor)
    try:
        yield actor
    finally:
        _actor.reset(token)


# --- the registry -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Audited:
    tenant_of: Callable[[models.Model], tuple[int | None, str]]
    ignored: frozenset[str]


_registry: dict[type[models.Model], _Audited] = {}
_m2m: dict[type[models.Model], tuple[type[models.Model], str]] = {}  # through model -> (model, field)


def _tenant_via(field: str | None) -> Callable[[models.Model], tuple[int | None, str]]:
    def tenant_of(obj: models.Model) -> tuple[int | None, str]:
        if field is None:
            return None, ""
        tenant_id = getattr(obj, f"{field}_id")
        if tenant_id is None:
            return None, ""
        cached = obj._state.fields_cache.get(field)
        if cached is not None:
            return tenant_id, cached.slug
        slug = Tenant.objects.filter(pk=tenant_id).values_list("slug", flat=True).first()
        return tenant_id, slug or ""

    return tenant_of


def _tenant_itself(obj: models.Model) -> tuple[int | None, str]:
    return obj.pk, obj.slug


def register(model: type[models.Model], *, tenant_field: str | None = None, ignored: Iterable[str] = ()) -> None:
    """Audit every change to `model`. `tenant_field` names its foreign key to the tenant it
    concerns (none: a platform object such as a catalog model or a plan); `ignored` names fields
    that change without being a change of configuration."""
    tenant_of = _tenant_itself if model is Tenant else _tenant_via(tenant_field)
    _registry[model] = _Audited(tenant_of=tenant_of, ignored=IGNORED_FIELDS | frozenset(ignored))
    for field in model._meta.local_many_to_many:
        _m2m[field.remote_field.through] = (model, field.name)
    _connect(model)


# --- snapshots and differences ----------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Decimal as a string, datetimes in ISO 8601, and so on: what JSON can keep as it is."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def snapshot(obj: models.Model) -> dict[str, Any]:
    """The audited fields of `obj` as stored (foreign keys as ids; secrets raw, masked by `_diff`)."""
    ignored = _registry[type(obj)].ignored
    return {
        field.name: field.value_from_object(obj)
        for field in obj._meta.concrete_fields
        if field.name not in ignored and not field.primary_key
    }


def _shown(model: type[models.Model], name: str, value: Any) -> Any:
    if name in SECRET_FIELDS:
        return SECRET if value else ""
    field = model._meta.get_field(name)
    if field.is_relation and value is not None:
        # What staff recognise, with the id: "standard (#3)"; "#3" when it is gone already.
        related = field.related_model._base_manager.filter(pk=value).first()
        return f"{related} (#{value})" if related is not None else f"#{value}"
    return _json_safe(value)


def _diff(
    model: type[models.Model], before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, list[Any]]:
    """{field: [before, after]} of the fields that differ; a create or a delete lists the fields
    that have a value. Foreign keys read their object (a query each, changed ones only)."""
    names = list((after or before or {}).keys())
    changes: dict[str, list[Any]] = {}
    for name in names:
        old = None if before is None else before.get(name)
        new = None if after is None else after.get(name)
        if before is not None and after is not None and old == new:
            continue
        if before is None or after is None:
            if (new if before is None else old) in (None, ""):
                continue
        shown = [
            None if before is None else _shown(model, name, old),
            None if after is None else _shown(model, name, new),
        ]
        if name in SECRET_FIELDS and old and new:
            shown = [SECRET, NEW_SECRET]
        changes[name] = shown
    return changes


# --- writing entries --------------------------------------------------------------------------


class _Kept:
    """A no-op commit callback: Django discards it with the savepoint it was registered in, so
    while it is still queued, the change it stands for has not been rolled back."""

    def __call__(self) -> None:
        pass


class _Batch:
    """Entries of one `collecting()` block, merged into one per object when the block ends.

    A change undone by a savepoint rolled back inside the block (a service that refused half-way,
    its exception caught by the caller) leaves no entry: each change registers a `_Kept` commit
    callback, and only changes whose callback survived are written.
    """

    def __init__(self) -> None:
        self.arrivals: list[tuple[AuditEntry, _Kept]] = []

    def add(self, entry: AuditEntry) -> None:
        kept = _Kept()
        transaction.on_commit(kept)
        self.arrivals.append((entry, kept))

    def flush(self) -> None:
        # Django keeps (savepoint ids, callback, robust) per callback; a rolled-back savepoint's are
        # gone. The markers are then taken out again: nobody else should ever see them run.
        connection = transaction.get_connection()
        queued = {id(item[1]) for item in connection.run_on_commit}
        connection.run_on_commit = [item for item in connection.run_on_commit if not isinstance(item[1], _Kept)]
        merged: dict[tuple[str, str], AuditEntry | None] = {}
        for entry, kept in self.arrivals:
            if id(kept) in queued:
                _merge(merged, entry)
        self.arrivals.clear()
        rows = []
        for entry in merged.values():
            if entry is None:
                continue
            if entry.action == AuditEntry.Action.UPDATE:
                entry.changes = {name: pair for name, pair in entry.changes.items() if pair[0] != pair[1]}
                if not entry.changes:
                    continue
            rows.append(entry)
        if rows:
            AuditEntry.objects.bulk_create(rows)


def _merge(merged: dict[tuple[str, str], AuditEntry | None], entry: AuditEntry) -> None:
    """Fold `entry` into the object's entry so far: first before, last after."""
    key = (entry.object_type, entry.object_id)
    first = merged.get(key)
    if first is None:  # the first, or created again after a delete in this block
        merged[key] = entry
        return
    if first.action == AuditEntry.Action.CREATE and entry.action == AuditEntry.Action.DELETE:
        merged[key] = None  # created and deleted in the same block: nothing to see
        return
    for name, (old, new) in entry.changes.items():
        if first.action == AuditEntry.Action.CREATE:
            first.changes[name] = [None, new]
        else:
            first.changes[name] = [first.changes[name][0] if name in first.changes else old, new]
    if entry.action == AuditEntry.Action.DELETE:
        first.action = AuditEntry.Action.DELETE
    first.object_repr = entry.object_repr
    if entry.tenant_id is not None:
        first.tenant_id, first.tenant_slug = entry.tenant_id, entry.tenant_slug


_batch: ContextVar[_Batch | None] = ContextVar("audit_batch", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """One transaction whose changes are written as one entry per object, at its end.

    A nested block is a savepoint (what the caller's `transaction.atomic()` was) whose entries join
    the outermost block's. Nothing is written when the block raises (its transaction is rolled
    back with the changes it audited).
    """
    if _batch.get() is not None:
        with transaction.atomic():
            yield
        return
    batch = _Batch()
    token = _batch.set(batch)
    try:
        with transaction.atomic():
            yield
            if not transaction.get_rollback():  # a dry run rolls back: nothing to write, nor may we
                batch.flush()
    finally:
        _batch.reset(token)


def _write(obj: models.Model, *, action: str, changes: dict[str, list[Any]]) -> None:
    if not changes and action == AuditEntry.Action.UPDATE:
        return
    actor = _actor.get()
    tenant_id, tenant_slug = _registry[type(obj)].tenant_of(obj)
    entry = AuditEntry(
        at=timezone.now(),
        actor_kind=actor.kind,
        actor_label=actor.label,
        staff_user_id=actor.staff_user_id,
        api_key_id=actor.api_key_id,
        tenant_id=tenant_id,
        tenant_slug=tenant_slug,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        action=action,
        changes=changes,
    )
    batch = _batch.get()
    if batch is not None:
        batch.add(entry)
    else:
        entry.save(force_insert=True)


def record_created(objs: Iterable[models.Model]) -> None:
    """Audit rows inserted without signals (`bulk_create`); they must have their primary keys."""
    for obj in objs:
        _write(obj, action=AuditEntry.Action.CREATE, changes=_diff(type(obj), None, snapshot(obj)))


def record_updated(obj: models.Model, *, before: dict[str, Any]) -> None:
    """Audit a row changed without signals (`bulk_update`), from its `snapshot` taken before."""
    _write(obj, action=AuditEntry.Action.UPDATE, changes=_diff(type(obj), before, snapshot(obj)))


def queryset_update(queryset: models.QuerySet, **values: Any) -> int:
    """`queryset.update(**values)`, audited: the rows are locked and read before and after.

    For the bulk edits of staff and imports (a few hundred rows at most), not the hot path.
    """
    model = queryset.model
    with transaction.atomic():
        rows = list(queryset.select_for_update().order_by("pk"))
        before = {row.pk: snapshot(row) for row in rows}
        count = model._base_manager.filter(pk__in=list(before)).update(**values)
        for row in model._base_manager.filter(pk__in=list(before)).order_by("pk"):
            record_updated(row, before=before[row.pk])
    return count


# --- signals ----------------------------------------------------------------------------------

_BEFORE = "_audit_before"
_M2M_BEFORE = "_audit_m2m_before"


def _on_pre_save(sender, instance, raw=False, update_fields=None, **kwargs) -> None:
    audited = _registry.get(sender)
    if audited is None or raw:
        return
    if update_fields is not None and set(update_fields) <= audited.ignored:
        instance.__dict__[_BEFORE] = False  # e.g. last_used_at: not a change of configuration
        return
    old = None
    if not instance._state.adding and instance.pk is not None:
        old = sender._base_manager.filter(pk=instance.pk).first()
    instance.__dict__[_BEFORE] = None if old is None else snapshot(old)


def _on_post_save(sender, instance, created=False, raw=False, update_fields=None, **kwargs) -> None:
    if sender not in _registry or raw:
        return
    before = instance.__dict__.pop(_BEFORE, None)
    if before is False:
        return
    after = snapshot(instance)
    if before is None or created:
        _write(instance, action=AuditEntry.Action.CREATE, changes=_diff(sender, None, after))
        return
    if update_fields is not None:
        # Only these were written; the instance's other fields may be stale copies.
        before = {k: v for k, v in before.items() if k in update_fields}
        after = {k: v for k, v in after.items() if k in update_fields}
    _write(instance, action=AuditEntry.Action.UPDATE, changes=_diff(sender, before, after))


def _on_pre_delete(sender, instance, **kwargs) -> None:
    # Written before the row goes, in the delete's own transaction: a cascade still finds the tenant.
    if sender in _registry:
        _write(instance, action=AuditEntry.Action.DELETE, changes=_diff(sender, snapshot(instance), None))


def _names(obj: models.Model, field: str) -> list[str]:
    return sorted(str(related) for related in getattr(obj, field).all())


def _on_m2m_changed(sender, instance, action, reverse, model, pk_set, **kwargs) -> None:
    owner = _m2m.get(sender)
    if owner is None:
        return
    owner_model, field = owner
    if reverse:
        # From the other side (catalog_model.tenants.add(tenant)): an update of each owner touched.
        owners = owner_model._base_manager.filter(**({"pk__in": pk_set} if pk_set else {field: instance}))
        if action.startswith("pre_"):
            instance.__dict__[_M2M_BEFORE] = {obj.pk: _names(obj, field) for obj in owners}
            return
        before = instance.__dict__.pop(_M2M_BEFORE, {})
        for obj in owner_model._base_manager.filter(pk__in=list(before)):
            after = _names(obj, field)
            if after != before[obj.pk]:
                _write(obj, action=AuditEntry.Action.UPDATE, changes={field: [before[obj.pk], after]})
        return
    if action.startswith("pre_"):
        instance.__dict__.setdefault(_M2M_BEFORE, {})[field] = _names(instance, field)
        return
    before = instance.__dict__.get(_M2M_BEFORE, {}).pop(field, None)
    after = _names(instance, field)
    if before is not None and before != after:
        _write(instance, action=AuditEntry.Action.UPDATE, changes={field: [before, after]})


def _connect(model: type[models.Model]) -> None:
    # Per sender, never for every model: a pre_delete receiver for all would cost every other
    # model its fast (single DELETE) bulk deletes, e.g. the purge of request logs.
    uid = model._meta.label_lower
    pre_save.connect(_on_pre_save, sender=model, dispatch_uid=f"audit_pre_save_{uid}")
    post_save.connect(_on_post_save, sender=model, dispatch_uid=f"audit_post_save_{uid}")
    pre_delete.connect(_on_pre_delete, sender=model, dispatch_uid=f"audit_pre_delete_{uid}")
    for field in model._meta.local_many_to_many:
        through = field.remote_field.through
        m2m_changed.connect(_on_m2m_changed, sender=through, dispatch_uid=f"audit_m2m_{through._meta.label_lower}")


class AuditedCommand(BaseCommand):
    """A management command whose changes are audited as its own: actor "command", labelled with
    the command's name. Every command that writes derives from it instead of BaseCommand."""

    def execute(self, *args, **options):
        with acting(command=type(self).__module__.rsplit(".", 1)[-1]):
            return super().execute(*args, **options)
