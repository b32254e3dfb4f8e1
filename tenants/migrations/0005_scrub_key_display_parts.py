"""Scrub what the display parts of imported keys gave away (issue 10).

Before, an imported key kept its first 4 and last 4 characters, so a key of 8 characters or
fewer ("tc_key12", "ta_xxx") was stored whole, and a longer one half. The stored parts do not say
how long the key was, so every key that is not a generated one (``tpk_``) loses both: its display
becomes "…" (it is still recognised by its name and dates). The admin's history (LogEntry) of
such a key named it by its display; those mentions are rewritten too. Generated keys keep
``tpk_`` + 4 and their last 4. Not reversible: what is scrubbed is gone.
"""

from django.db import migrations

GENERATED_PREFIX = "tpk_"
HIDDEN = "…"


def scrub(apps, schema_editor):
    ApiKey = apps.get_model("tenants", "ApiKey")
    leaking = ApiKey.objects.exclude(prefix__startswith=GENERATED_PREFIX).exclude(prefix="", last4="")
    displays = {}
    for key in leaking.only("id", "prefix", "last4"):
        displays[key.id] = f"{key.prefix}…{key.last4}"
    if not displays:
        return
    ApiKey.objects.filter(id__in=list(displays)).update(prefix="", last4="")

    try:
        LogEntry = apps.get_model("admin", "LogEntry")
        ContentType = apps.get_model("contenttypes", "ContentType")
    except LookupError:  # the admin is not installed: no history to scrub
        return
    content_type = ContentType.objects.filter(app_label="tenants", model="apikey").first()
    if content_type is None:
        return
    shown = sorted(set(displays.values()), key=len, reverse=True)
    for entry in LogEntry.objects.filter(content_type=content_type).only("id", "object_repr", "change_message"):
        repr_, message = entry.object_repr, entry.change_message
        for display in shown:
            repr_, message = repr_.replace(display, HIDDEN), message.replace(display, HIDDEN)
        if (repr_, message) != (entry.object_repr, entry.change_message):
            LogEntry.objects.filter(id=entry.id).update(object_repr=repr_, change_message=message)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0004_apikey_monthly_budget"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(scrub, migrations.RunPython.noop, elidable=True)]
