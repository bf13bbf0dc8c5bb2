"""Operators' rights (issue 17): custom permissions on users, and the `operator` group.

The group is the operator's role: remove users from the queue, change weights, read the
dashboard, and see (and cancel, requeue, reprioritise) every job in the admin. Superusers
hold every permission without a group. Django creates permissions after all migrations
(post_migrate), so this one creates the rows it gives the group itself; the later
post_migrate pass finds them and adds nothing. Frozen: the lists below are this
migration's own, not imported.

Named 0009 after the lead's 0008; another branch's migration may land first, and then
the dependency moves onto it at merge.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

CUSTOM = [
    ("remove_from_queue", "Can remove users from the queue"),
    ("change_weight", "Can change users' weights"),
    ("view_dashboard", "Can read the operators' dashboard"),
    ("act_for_users", "Can submit jobs for any user (an application backend)"),
]
# (model, codename, name) the operator group holds besides the custom ones.
OPERATOR_MODEL_PERMISSIONS = [
    ("user", "view_user", "Can view user"),
    ("job", "view_job", "Can view job"),
    ("job", "change_job", "Can change job"),
    ("fairpool", "view_fairpool", "Can view fair pool"),
    ("fairshareaccount", "view_fairshareaccount", "Can view fair share account"),
]
OPERATOR_CUSTOM = ["remove_from_queue", "change_weight", "view_dashboard"]


def create_operator_group(apps: Any, schema_editor: Any) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    db = schema_editor.connection.alias

    def permission(model: str, codename: str, name: str) -> Any:
        content_type, _ = ContentType.objects.using(db).get_or_create(app_label="jobs", model=model)
        found, _ = Permission.objects.using(db).get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )
        return found

    custom = {codename: permission("user", codename, name) for codename, name in CUSTOM}
    granted = [custom[codename] for codename in OPERATOR_CUSTOM]
    granted += [permission(*row) for row in OPERATOR_MODEL_PERMISSIONS]
    group, _ = Group.objects.using(db).get_or_create(name="operator")
    group.permissions.add(*granted)


def remove_operator_group(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.using(schema_editor.connection.alias).filter(
        name="operator"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("jobs", "0010_job_progress"),
    ]

    operations = [
        migrations.AlterModelOptions(name="user", options={"permissions": CUSTOM}),
        migrations.RunPython(create_operator_group, remove_operator_group),
    ]
